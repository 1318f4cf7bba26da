//! Authorize: find the key's chain (memory, then the store), judge it with
//! the core's rule, and reserve in one atomic write; retries only what is
//! safe to retry, within one deadline.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::config::Settings;
use crate::decision::{
    admit, check_chain, check_key, check_model, reservation_amount, Admission, Denial, KeyRefusal,
    Requested,
};
use crate::keys::hash_key;
use crate::model::{Chain, EntityRef, Reservation};

/// The scopes a request names itself (from its headers: untrusted, charged
/// as named): the end customer. Validated before they get here (see the
/// authorize function's header rules).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestScopes {
    pub customer: Option<String>,
    /// The model the request says it calls (`x-litellm-model`): charged to
    /// the key's budget for it, if the key has one.
    pub model: Option<String>,
    /// The tags it names (`x-litellm-tags`), distinct, sorted, at most
    /// [`MAX_REQUEST_TAGS`]: each charged, where it has a budget.
    pub tags: Vec<String>,
}

/// The most tags one request may name: each is one more item in its
/// transaction (so a chain stays far below DynamoDB's 100), and a request
/// naming more is refused.
pub const MAX_REQUEST_TAGS: usize = 8;

/// The longest list of tags a request may send (bytes), checked before it
/// is split.
pub const MAX_REQUEST_TAGS_BYTES: usize = 1024;

/// The tags a request names in `list` (comma separated, as LiteLLM's
/// `x-litellm-tags`; `named` is what the errors call it): at most
/// [`MAX_REQUEST_TAGS_BYTES`], each an id (`ids::is_tag_name`), empty
/// entries ignored, distinct and sorted, at most [`MAX_REQUEST_TAGS`] of
/// them — the form [`RequestScopes::tags`] must have (a tag named twice
/// would be one item twice in the transaction). Bounded work whatever
/// `list` holds: its length is checked first.
pub fn request_tags(list: &str, named: &str) -> Result<Vec<String>, String> {
    if list.len() > MAX_REQUEST_TAGS_BYTES {
        return Err(format!(
            "{named} is longer than {MAX_REQUEST_TAGS_BYTES} bytes"
        ));
    }
    let mut tags: Vec<String> = Vec::new();
    for tag in list.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        if !crate::ids::is_tag_name(tag) {
            return Err(format!(
                "{named}: each tag must be 1 to {} ASCII letters, digits or {}",
                crate::ids::MAX_ID_BYTES,
                crate::ids::ID_PUNCTUATION
            ));
        }
        if !tags.iter().any(|t| t == tag) {
            tags.push(tag.to_string());
        }
        if tags.len() > MAX_REQUEST_TAGS {
            return Err(format!("{named} names more than {MAX_REQUEST_TAGS} tags"));
        }
    }
    tags.sort();
    Ok(tags)
}

impl RequestScopes {
    /// The entities these name for a request of `key` (a model only where
    /// the key has a budget for it).
    fn refs(&self, key: &crate::model::Entity) -> Vec<EntityRef> {
        let model = self
            .model
            .as_deref()
            .filter(|m| key.model_budgets.iter().any(|b| b == m))
            .map(|m| EntityRef::model(&key.entity.id, m));
        self.customer
            .iter()
            .map(EntityRef::customer)
            .chain(model)
            .chain(self.tags.iter().map(EntityRef::tag))
            .collect()
    }
}
use crate::money::Money;
use crate::store::{BudgetStore, ReserveWrite, StoreError};

use super::escrow::Next;
use super::stats::{retried, store_call};
use super::{backoff, MAX_ATTEMPTS};

/// Chains kept in memory per function instance.
const CACHE_CAPACITY: usize = 10_000;
/// A presented key longer than this cannot be one (custom keys have at
/// most 256 characters): refused before it is hashed or looked up.
pub const MAX_KEY_BYTES: usize = 256;

/// What authorize decided.
#[derive(Debug, Clone, PartialEq)]
pub enum AuthorizeOutcome {
    Allowed {
        reservation: Box<Reservation>,
        admission: Admission,
        /// A retried request found its earlier reservation.
        duplicate: bool,
    },
    Denied(Box<Denial>),
    Refused(KeyRefusal),
    InvalidKey,
    /// A header is not usable: `x-budget-reserve` is not an amount, or a
    /// header naming a scope (the customer) is malformed. Nothing is read
    /// or written.
    InvalidEstimate(String),
    /// The store failed or stayed contended: fail closed.
    Unavailable(String),
    /// The request is governed by more scopes than one atomic write can
    /// hold (`items` with the reservation, past
    /// [`crate::model::MAX_TRANSACTION_ITEMS`]): refused, nothing written.
    TooManyScopes {
        items: usize,
    },
}

/// The reservation id: derived from the gateway's request id when there is
/// one, so a retried authorization of the same request finds its first
/// reservation instead of taking a second.
pub fn reservation_id(key_hash: &str, request_id: Option<&str>) -> String {
    match request_id.filter(|r| !r.is_empty()) {
        Some(req) => {
            let digest = Sha256::digest(format!("{key_hash}\n{req}").as_bytes());
            format!("r-{}", &hex::encode(digest)[..RESERVATION_HEX])
        }
        None => format!(
            "r-{}",
            hex::encode(rand::random::<[u8; RESERVATION_HEX / 2]>())
        ),
    }
}

/// The hex digits of a reservation id after its `r-`
/// (`receipt::is_reservation_id` checks the form).
pub const RESERVATION_HEX: usize = 32;

/// Authorizes requests; keeps each key's chain (configuration and window
/// boundaries) in memory between invocations. The cache can never admit
/// against stale limits: the write is conditional on each entity's
/// version, and any failed condition re-reads the chain.
pub struct Authorizer<S> {
    pub store: S,
    pub settings: Settings,
    cache: Mutex<HashMap<String, Chain>>,
    ceilings: super::escrow::Ceilings,
}

impl<S: BudgetStore> Authorizer<S> {
    pub fn new(store: S, settings: Settings) -> Authorizer<S> {
        Authorizer {
            store,
            settings,
            cache: Mutex::new(HashMap::new()),
            ceilings: Default::default(),
        }
    }

    fn cached(&self, hash: &str) -> Option<Chain> {
        self.cache.lock().ok()?.get(hash).cloned()
    }

    fn remember(&self, hash: &str, chain: Option<Chain>) {
        if let Ok(mut cache) = self.cache.lock() {
            match chain {
                Some(c) => {
                    if cache.len() >= CACHE_CAPACITY && !cache.contains_key(hash) {
                        cache.clear();
                    }
                    cache.insert(hash.to_string(), c);
                }
                None => {
                    cache.remove(hash);
                }
            }
        }
    }

    /// Checks every window of the key's chain and reserves what the request
    /// asked for (see [`reservation_amount`]) in one atomic write.
    /// Everything it does ends within `AUTHORIZE_DEADLINE_MS`; past it, the
    /// request is denied `unavailable`.
    pub async fn authorize(
        &self,
        key: &str,
        requested: impl Into<Requested>,
        request_id: Option<&str>,
        now: DateTime<Utc>,
    ) -> AuthorizeOutcome {
        self.authorize_for(key, &RequestScopes::default(), requested, request_id, now)
            .await
    }

    /// [`Authorizer::authorize`] for a request that names scopes of its
    /// own (`named`: its end customer), charged beside the key's chain in
    /// the same write.
    pub async fn authorize_for(
        &self,
        key: &str,
        named: &RequestScopes,
        requested: impl Into<Requested>,
        request_id: Option<&str>,
        now: DateTime<Utc>,
    ) -> AuthorizeOutcome {
        let deadline = Duration::from_millis(self.settings.authorize_deadline_ms);
        let attempt = self.try_authorize(key, named, requested.into(), request_id, now);
        match tokio::time::timeout(deadline, attempt).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) => AuthorizeOutcome::Unavailable(e.to_string()),
            Err(_) => AuthorizeOutcome::Unavailable(format!(
                "no decision within the authorization deadline ({} ms)",
                self.settings.authorize_deadline_ms
            )),
        }
    }

    async fn try_authorize(
        &self,
        key: &str,
        named: &RequestScopes,
        requested: Requested,
        request_id: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<AuthorizeOutcome, StoreError> {
        if key.len() > MAX_KEY_BYTES {
            return Ok(AuthorizeOutcome::InvalidKey);
        }
        let Some(mut req) = self.start(hash_key(key), named, request_id).await? else {
            return Ok(AuthorizeOutcome::InvalidKey);
        };
        // Set when what we hold may be out of date: read the chain afresh.
        let mut stale = false;
        // Steps of a sharded budget (refills, gatherings) are not failed
        // attempts; they have a bound of their own.
        let mut attempt = 0;
        // One per sharded owner found short (a user and a team may both be).
        let mut asks: Vec<(EntityRef, super::escrow::Ask)> = Vec::new();
        while attempt < MAX_ATTEMPTS {
            if attempt > 0 {
                retried();
            }
            attempt += 1;
            if stale && !self.refresh(&mut req).await? {
                return Ok(AuthorizeOutcome::InvalidKey);
            }
            stale = false;
            if let Some(e) = super::escrow::due(&req.chain, now) {
                let entity = e.entity.clone();
                let clock = &self.settings.clock;
                let rolled =
                    store_call(super::escrow::roll(&self.store, &entity, now, clock)).await?;
                if rolled == super::escrow::Rolled::Busy {
                    // Another request is rolling it: let it finish.
                    backoff(attempt).await;
                }
                stale = true;
                continue;
            }
            // A retry of a request that was admitted is recognised before it
            // is judged (its own reservation may be what fills the window
            // now), on a fresh read and only while the key itself is good:
            // only the budget is forgiven.
            if req.fresh && check_key(&req.chain.key, now).is_ok() {
                if let Some(first) = req.own.take_if(|r| r.state.holds_budget()) {
                    self.remember(&req.cache_id, Some(req.chain));
                    return Ok(first_answer(first));
                }
            }
            // Every scope takes part in the one atomic write, or none:
            // a chain wider than a transaction is refused, never cut.
            let items = req.chain.reserve_items();
            if items > crate::model::MAX_TRANSACTION_ITEMS {
                return Ok(self.refused(req, AuthorizeOutcome::TooManyScopes { items }));
            }
            let estimate = reservation_amount(requested, &req.chain, &self.settings);
            let judged = check_model(&req.chain, req.named.model.as_deref())
                .map_err(AuthorizeOutcome::Refused)
                .and_then(|_| judge(&req.chain, estimate, now, &self.settings.clock));
            let admission = match judged {
                Ok(a) => a,
                // What memory says may be out of date: only a fresh read denies.
                Err(_) if !req.fresh => {
                    stale = true;
                    continue;
                }
                Err(outcome) => return Ok(self.refused(req, outcome)),
            };
            // A sharded entity known to be short: one read denies.
            let early = super::escrow::early_denial(
                &self.store,
                &self.ceilings,
                &req.chain,
                estimate,
                (&req.id, req.retry),
                now,
                &self.settings.clock,
            );
            if let Some(denial) = store_call(early).await? {
                return Ok(self.refused(req, AuthorizeOutcome::Denied(Box::new(denial))));
            }
            match self.write(&mut req, estimate, admission, now).await? {
                Step::Done(outcome) => return Ok(outcome),
                Step::Reread => stale = true,
                Step::Retry => backoff(attempt).await,
                Step::Short(slot) => {
                    let Some(owner) = req.chain.entities().find(|e| e.entity == slot.owner())
                    else {
                        stale = true;
                        continue;
                    };
                    let owner = owner.clone();
                    let clock = &self.settings.clock;
                    let at = match asks.iter().position(|(e, _)| e == &owner.entity) {
                        Some(at) => at,
                        None => {
                            asks.push((owner.entity.clone(), Default::default()));
                            asks.len() - 1
                        }
                    };
                    let ask = &mut asks[at].1;
                    let step = super::escrow::step(
                        &self.store,
                        &self.ceilings,
                        &owner,
                        &slot,
                        (estimate, &mut *ask),
                        now,
                        clock,
                    );
                    match store_call(step).await? {
                        Next::Retry if ask.steps < MAX_ESCROW_STEPS => {
                            ask.steps += 1;
                            attempt -= 1;
                        }
                        Next::Retry | Next::Busy => backoff(attempt).await,
                        Next::Undecided => {
                            return Ok(AuthorizeOutcome::Unavailable(UNDECIDED.into()))
                        }
                        Next::Reread => stale = true,
                        Next::Deny(denial) => {
                            return Ok(self.refused(req, AuthorizeOutcome::Denied(denial)))
                        }
                    }
                }
                // That request is over (settled or expired): a replay gets
                // a decision of its own, under a new id.
                Step::NewId => req.id = reservation_id(&req.hash, None),
            }
        }
        Ok(AuthorizeOutcome::Unavailable(
            "budget counters too contended, try again".into(),
        ))
    }

    /// The chain as memory knows it, or else from the key item alone (with
    /// its owners' snapshot: counters unknown, so it can admit but never
    /// deny). `None` for an unknown key.
    async fn start(
        &self,
        hash: String,
        named: &RequestScopes,
        request_id: Option<&str>,
    ) -> Result<Option<InFlight>, StoreError> {
        // A chain is cached per key and customer (the customer is part of
        // it); never one request's customer for another's.
        let cache_id = if *named == RequestScopes::default() {
            hash.clone()
        } else {
            format!(
                "{hash}\ncustomer\n{}\nmodel\n{}\ntags\n{}",
                named.customer.as_deref().unwrap_or(""),
                named.model.as_deref().unwrap_or(""),
                named.tags.join(",")
            )
        };
        let (chain, snapshot) = match self.cached(&cache_id) {
            // A named scope the cached chain lacks (it did not exist when
            // it was read) is looked for again: one created since is never
            // left out of a warm instance's write.
            Some(mut c) => {
                self.add_named(&mut c, named).await?;
                (c, false)
            }
            None => match store_call(self.store.load_chain_quick(&hash)).await? {
                Some(mut c) => {
                    self.add_named(&mut c, named).await?;
                    (c, true)
                }
                None => return Ok(None),
            },
        };
        let retry = request_id.filter(|r| !r.is_empty());
        Ok(Some(InFlight {
            id: reservation_id(&hash, retry),
            retry: retry.is_some(),
            named: named.clone(),
            cache_id,
            hash,
            from_snapshot: snapshot,
            chain,
            fresh: false,
            own: None,
        }))
    }

    /// Reads the chain afresh (and, for a request that may be a retry, its
    /// own reservation in the same request). `false`: the key is gone.
    async fn refresh(&self, req: &mut InFlight) -> Result<bool, StoreError> {
        let (read, own) = if req.retry {
            store_call(self.store.load_chain_and_reservation(&req.hash, &req.id)).await?
        } else {
            (store_call(self.store.load_chain(&req.hash)).await?, None)
        };
        let Some(mut chain) = read else {
            self.remember(&req.cache_id, None);
            return Ok(false);
        };
        self.add_named(&mut chain, &req.named).await?;
        if std::mem::take(&mut req.from_snapshot) && snapshot_out_of_date(&req.chain, &chain) {
            // Once per key after an owner changed: the next cold instance
            // then decides from the key item alone again.
            if let Err(e) = store_call(self.store.refresh_snapshot(&chain)).await {
                tracing::warn!(error = %e, "owner snapshot not refreshed");
            }
        }
        (req.chain, req.fresh, req.own) = (chain, true, own);
        Ok(true)
    }

    /// The answer to a request refused on a fresh read (a retry whose
    /// first reservation holds never gets here: see `try_authorize`).
    fn refused(&self, req: InFlight, outcome: AuthorizeOutcome) -> AuthorizeOutcome {
        self.remember(&req.cache_id, Some(req.chain));
        outcome
    }

    /// The scopes the request names that `chain` does not hold, read into
    /// it (strongly consistent): one that does not exist has no budget and
    /// is not charged (and is looked for again by the next request).
    async fn add_named(&self, chain: &mut Chain, named: &RequestScopes) -> Result<(), StoreError> {
        let refs: Vec<EntityRef> = named
            .refs(&chain.key)
            .into_iter()
            .filter(|r| !chain.scopes.iter().any(|e| &e.entity == r))
            .collect();
        if refs.is_empty() {
            return Ok(());
        }
        for e in store_call(self.store.load_many(&refs)).await? {
            chain.set_owner(e);
        }
        Ok(())
    }

    /// The one atomic write of an admitted request, and what it means.
    async fn write(
        &self,
        req: &mut InFlight,
        estimate: Money,
        admission: Admission,
        now: DateTime<Utc>,
    ) -> Result<Step, StoreError> {
        let clock = &self.settings.clock;
        let mut reservation = new_reservation(
            &req.id,
            &req.hash,
            &req.chain,
            estimate,
            now,
            &self.settings,
        );
        reservation.remaining = admission.remaining;
        reservation.tightest = admission.tightest.clone();
        Ok(
            match store_call(self.store.reserve(&req.chain, &reservation, now, clock)).await? {
                ReserveWrite::Reserved => {
                    let after = apply_reservation(req.chain.clone(), estimate, now, clock);
                    self.remember(&req.cache_id, Some(after));
                    Step::Done(AuthorizeOutcome::Allowed {
                        reservation: Box::new(reservation),
                        admission,
                        duplicate: false,
                    })
                }
                // The write's other conditions may have failed too (a key
                // blocked since): judge the retry on a fresh read first.
                ReserveWrite::Duplicate if !req.fresh => Step::Reread,
                // A retry of a request whose answer was lost: the same
                // reservation and the same answer, not a second one.
                ReserveWrite::Duplicate => match req.own.take() {
                    Some(read) => answer_of(read).map_or(Step::NewId, Step::Done),
                    None => self.held(&req.id).await?.map_or(Step::NewId, Step::Done),
                },
                ReserveWrite::Stale => Step::Reread,
                ReserveWrite::Conflict => Step::Retry,
                ReserveWrite::Short(slot) => Step::Short(slot),
            },
        )
    }

    /// The answer already given for reservation `id`, if it still holds.
    async fn held(&self, id: &str) -> Result<Option<AuthorizeOutcome>, StoreError> {
        Ok(store_call(self.store.reservation(id))
            .await?
            .and_then(answer_of))
    }
}

/// The answer near a sharded budget's cap when the totals could not be
/// read at one instant.
const UNDECIDED: &str = "budget nearly used up: what is left is held by requests in flight \
or spread over the budget's shards; try again in a few seconds";

/// One authorization in progress: what is known of the chain and of the
/// request's own reservation.
struct InFlight {
    hash: String,
    /// What the chain is cached under: the key, and the customer named.
    cache_id: String,
    named: RequestScopes,
    /// The gateway gave a request id: this may be a retry.
    retry: bool,
    id: String,
    chain: Chain,
    /// Read from the store during this request (so it may deny).
    fresh: bool,
    /// `chain` came from the key item and its snapshot of the owners.
    from_snapshot: bool,
    /// This request's own reservation, as the last fresh read found it.
    own: Option<Reservation>,
}

/// What to do after a write.
enum Step {
    Done(AuthorizeOutcome),
    Reread,
    Retry,
    NewId,
    /// A sharded entity's shard did not cover the estimate.
    Short(EntityRef),
}

/// Refills and gatherings one request may make before it counts them as
/// failed attempts (near the cap, under contention).
const MAX_ESCROW_STEPS: usize = 16;

/// Whether the owners in the key's snapshot (`quick`) differ from what a
/// fresh read found.
fn snapshot_out_of_date(quick: &Chain, fresh: &Chain) -> bool {
    let owners = |c: &Chain| {
        c.scopes
            .iter()
            .filter(|e| !e.entity.kind.from_request())
            .cloned()
            .collect::<Vec<_>>()
    };
    let (was, is) = (owners(quick), owners(fresh));
    was.len() != is.len() || was.iter().zip(&is).any(|(a, b)| !a.same_configuration(b))
}

/// The key's state, then the budget rule, on `chain` as known.
fn judge(
    chain: &Chain,
    estimate: Money,
    now: DateTime<Utc>,
    clock: &crate::duration::ResetClock,
) -> Result<Admission, AuthorizeOutcome> {
    check_chain(chain, now).map_err(AuthorizeOutcome::Refused)?;
    admit(chain, estimate, now, clock).map_err(|d| AuthorizeOutcome::Denied(Box::new(d)))
}

/// The answer given when `first` was taken, if it still holds.
fn answer_of(first: Reservation) -> Option<AuthorizeOutcome> {
    first.state.holds_budget().then(|| first_answer(first))
}

/// The answer given when `first` was taken (same id, same `remaining`).
fn first_answer(first: Reservation) -> AuthorizeOutcome {
    let admission = Admission {
        tightest: first.tightest.clone(),
        remaining: first.remaining,
    };
    AuthorizeOutcome::Allowed {
        reservation: Box::new(first),
        admission,
        duplicate: true,
    }
}

fn new_reservation(
    id: &str,
    hash: &str,
    chain: &Chain,
    estimate: Money,
    now: DateTime<Utc>,
    settings: &Settings,
) -> Reservation {
    let owners = (chain.key.user_id.clone(), chain.key.team_id.clone());
    let expires_at = now + chrono::Duration::seconds(settings.reservation_ttl_seconds);
    let holds = chain.holds(crate::escrow::pick_of(id));
    let mut r = Reservation::held(id, estimate, holds, hash, owners, now, expires_at);
    let (user, team) = (r.user_id.as_deref(), r.team_id.as_deref());
    r.receipt = crate::receipt::encode(estimate, &r.holds, user, team);
    r.receipt_digest = r.receipt.as_deref().map(crate::receipt::digest);
    r
}

/// The chain as it is after our own reservation (for the next request's
/// boundaries; the counters are only a hint, the write re-checks them).
fn apply_reservation(
    mut chain: Chain,
    estimate: Money,
    now: DateTime<Utc>,
    clock: &crate::duration::ResetClock,
) -> Chain {
    for e in chain.entities_mut() {
        for w in &mut e.windows {
            *w = w.as_of(now, clock);
            w.reserved = w.reserved.saturating_add(estimate);
        }
    }
    chain
}

#[cfg(test)]
mod tests {
    //! The service over the memory store, which executes the same plans as
    //! DynamoDB: retries, cache, stale re-reads, duplicates.

    use super::*;

    #[test]
    fn a_request_tag_list_is_bounded_distinct_and_sorted() {
        let h = "x-litellm-tags";
        assert_eq!(request_tags(" b, a,,b ,a", h).unwrap(), ["a", "b"]);
        assert_eq!(request_tags("", h).unwrap(), Vec::<String>::new());
        let nine: Vec<String> = (0..9).map(|i| format!("t{i}")).collect();
        assert_eq!(
            request_tags(&nine.join(","), h).unwrap_err(),
            "x-litellm-tags names more than 8 tags"
        );
        // Repeats count once: eight distinct tags named many times pass.
        let eight = nine[..8].join(",");
        assert_eq!(
            request_tags(&format!("{eight},{eight}"), h).unwrap().len(),
            8
        );
        assert!(request_tags("a b", h)
            .unwrap_err()
            .contains("each tag must be"));
        assert_eq!(
            request_tags(&"a,".repeat(600), h).unwrap_err(),
            "x-litellm-tags is longer than 1024 bytes"
        );
    }

    #[test]
    fn an_entity_has_each_span_once_and_at_most_ten_windows() {
        use crate::model::{check_window_spans, Span, WindowSetError};
        let span = |s: &str| Span::parse_id(s).unwrap();
        assert_eq!(check_window_spans(vec![span("1d"), span("30d")]), Ok(()));
        assert_eq!(
            check_window_spans(vec![span("7d"), span("1d"), span("7d")]),
            Err(WindowSetError::Twice(span("7d")))
        );
        let eleven: Vec<Span> = (1..=11).map(|n| span(&format!("{n}h"))).collect();
        assert_eq!(check_window_spans(eleven), Err(WindowSetError::TooMany(11)));
    }
    use crate::model::{Entity, EntityRef, Span, Window};
    use crate::service::{settle, SettleOutcome};
    use crate::store::memory::{Injected, MemoryStore};
    use crate::store::{AdminStore, AdminWrite};
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 28, 15, 0, 0).unwrap()
    }

    fn settings() -> Settings {
        Settings::from_lookup(|k| (k == "TABLE_NAME").then(|| "t".to_string())).unwrap()
    }

    /// A key with a `max` USD daily window on its user; returns the key.
    async fn key_with_user_window(store: &MemoryStore, max: i64) -> String {
        let clock = settings().clock;
        let mut user = Entity::new(EntityRef::user("u"), now());
        user.windows.push(Window::open(
            Span::parse_id("1d").unwrap(),
            Money::usd(max),
            false,
            now(),
            &clock,
        ));
        assert_eq!(store.create(&user).await.unwrap(), AdminWrite::Done);
        let key = crate::keys::generate_key();
        let mut k = Entity::new(EntityRef::key(hash_key(&key)), now());
        k.user_id = Some("u".into());
        assert_eq!(store.create(&k).await.unwrap(), AdminWrite::Done);
        key
    }

    fn reservation_of(outcome: &AuthorizeOutcome) -> &Reservation {
        match outcome {
            AuthorizeOutcome::Allowed { reservation, .. } => reservation,
            other => panic!("not allowed: {other:?}"),
        }
    }

    fn user_window(store: &MemoryStore) -> Window {
        store.entity(&EntityRef::user("u")).unwrap().windows[0].clone()
    }

    #[test]
    fn the_widest_chain_fits_one_transaction() {
        // Key, user, team, team member, organization, customer, model, the
        // most tags a request may name, and the reservation.
        let widest = 7 + MAX_REQUEST_TAGS + 1;
        assert_eq!(widest, 16);
        assert!(widest <= crate::model::MAX_TRANSACTION_ITEMS);
    }

    #[tokio::test]
    async fn a_cached_chain_never_denies_alone_the_fresh_read_does() {
        let store = MemoryStore::new();
        let key = key_with_user_window(&store, 3).await;
        let warm = Authorizer::new(store.clone(), settings());
        let other = Authorizer::new(store.clone(), settings());
        let r = warm.authorize(&key, Money::usd(1), None, now()).await;
        reservation_of(&r);
        // Another instance takes the rest; the warm cache does not know.
        reservation_of(&other.authorize(&key, Money::usd(2), None, now()).await);
        let before = store.requests();
        let denied = warm.authorize(&key, Money::usd(1), None, now()).await;
        assert!(matches!(denied, AuthorizeOutcome::Denied(_)), "{denied:?}");
        // The refused write, then the fresh read that denies.
        assert_eq!(store.requests() - before, 2);
        assert_eq!(user_window(&store).reserved, Money::usd(3));
    }

    #[tokio::test]
    async fn a_duplicate_request_gets_the_same_reservation_and_answer() {
        let store = MemoryStore::new();
        let key = key_with_user_window(&store, 1).await;
        let first = Authorizer::new(store.clone(), settings())
            .authorize(&key, Money::usd(1), Some("req-1"), now())
            .await;
        for a in [
            Authorizer::new(store.clone(), settings()),
            Authorizer::new(store.clone(), settings()),
        ] {
            let before = store.requests();
            let again = a.authorize(&key, Money::usd(1), Some("req-1"), now()).await;
            // Cold: the chain (the memory store's shows the window full),
            // then the fresh read that finds the first reservation — no
            // write at all.
            assert_eq!(store.requests() - before, 2);
            assert_eq!(reservation_of(&again).id, reservation_of(&first).id);
            match again {
                AuthorizeOutcome::Allowed {
                    duplicate,
                    admission,
                    ..
                } => {
                    assert!(duplicate);
                    assert_eq!(admission.remaining, Some(Money::ZERO));
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(user_window(&store).reserved, Money::usd(1));
    }

    #[tokio::test]
    async fn a_replay_after_settle_is_a_new_request_under_a_new_id() {
        let store = MemoryStore::new();
        let key = key_with_user_window(&store, 5).await;
        let a = Authorizer::new(store.clone(), settings());
        let first = a.authorize(&key, Money::usd(1), Some("req-2"), now()).await;
        let id = reservation_of(&first).id.clone();
        let settled = settle(&store, &id, Money::usd(1), now(), &settings()).await;
        assert!(matches!(
            settled,
            Ok(SettleOutcome::Settled {
                duplicate: false,
                ..
            })
        ));
        let replay = a.authorize(&key, Money::usd(1), Some("req-2"), now()).await;
        assert_ne!(reservation_of(&replay).id, id);
        let w = user_window(&store);
        assert_eq!((w.spent, w.reserved), (Money::usd(1), Money::usd(1)));
    }

    #[tokio::test]
    async fn conflicts_back_off_and_retry_then_exhaustion_fails_closed() {
        let store = MemoryStore::new();
        let key = key_with_user_window(&store, 5).await;
        let a = Authorizer::new(store.clone(), settings());
        store.inject(Injected::Conflict, 3);
        reservation_of(&a.authorize(&key, Money::usd(1), None, now()).await);
        store.inject(Injected::Conflict, MAX_ATTEMPTS);
        let outcome = a.authorize(&key, Money::usd(1), None, now()).await;
        assert_eq!(
            outcome,
            AuthorizeOutcome::Unavailable("budget counters too contended, try again".into())
        );
        store.inject(Injected::Unavailable, 1);
        let outcome = a.authorize(&key, Money::usd(1), None, now()).await;
        assert!(matches!(outcome, AuthorizeOutcome::Unavailable(_)));
        assert_eq!(user_window(&store).reserved, Money::usd(1), "one admitted");
    }

    #[tokio::test]
    async fn the_floor_of_the_chain_raises_what_is_reserved() {
        let store = MemoryStore::new();
        let key = key_with_user_window(&store, 5).await;
        let old = store.entity(&EntityRef::user("u")).unwrap();
        let new = Entity {
            reservation_floor: Some(Money::usd(2)),
            ..old.clone()
        };
        assert_eq!(store.update(&old, &new).await.unwrap(), AdminWrite::Done);
        let a = Authorizer::new(store.clone(), settings());
        for asked in [Requested::Amount(Money::ZERO), Requested::Default] {
            let r = a.authorize(&key, asked, None, now()).await;
            assert_eq!(reservation_of(&r).amount, Money::usd(2));
        }
        let r = a.authorize(&key, Money::usd(1), None, now()).await;
        assert!(matches!(r, AuthorizeOutcome::Denied(_)), "5 − 4 < 2: {r:?}");
    }
}
