//! The core's plans executed by both stores on the same random cases: the
//! DynamoDB rendering (against the emulator) and the memory store's
//! evaluation agree on every outcome and every counter — so the memory
//! store the service's unit tests use behaves as the real one does. (Both
//! run the same plans, so a wrong rule in plan.rs passes here: that is what
//! plan.rs's property tests and tests/e2e/conservation.rs are for; this
//! checks the two executions, including DynamoDB's stored `used`.)

use budget_core::duration::ResetClock;
use budget_core::model::{Chain, Entity, EntityRef, Reservation, Span, Window};
use budget_core::store::memory::MemoryStore;
use budget_core::store::prelude::*;
use budget_core::store::{AdminWrite, Finish};
use budget_core::Money;
use chrono::{DateTime, Duration, Utc};
use edge_budget::at;

use crate::helpers::TestApp;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const NOW: &str = "2026-11-28T15:08:00Z";

/// A user with up to three windows, counters and boundaries drawn at
/// random (some past their boundary), and a key of it.
fn case(rng: &mut StdRng, n: usize, now: DateTime<Utc>, clock: &ResetClock) -> (Entity, Entity) {
    let mut user = Entity::new(EntityRef::user(format!("u-{n}")), now);
    for span in ["1h", "1d", "lifetime"] {
        if rng.random_bool(0.4) {
            continue;
        }
        let span = Span::parse_id(span).unwrap();
        let mut w = Window::open(span, Money::usd(rng.random_range(2..10)), false, now, clock);
        w.spent = Money::usd(rng.random_range(0..5));
        w.reserved = Money::usd(rng.random_range(0..4));
        if span != Span::Lifetime && rng.random_bool(0.3) {
            w.reset_at = Some(now - Duration::minutes(5)); // due
        }
        user.windows.push(w);
    }
    let mut key = Entity::new(EntityRef::key(format!("{n:064x}")), now);
    key.user_id = Some(user.entity.id.clone());
    (user, key)
}

fn reservation(n: usize, chain: &Chain, amount: Money, now: DateTime<Utc>) -> Reservation {
    let owners = (chain.key.user_id.clone(), None);
    let expires_at = now + Duration::minutes(15);
    let key_hash = chain.key.entity.id.clone();
    let id = format!("r-{n:032x}");
    let holds = chain.holds(budget_core::escrow::pick_of(&id));
    Reservation::held(id, amount, holds, key_hash, owners, now, expires_at)
}

/// DynamoDB stores `used` (a condition cannot add two attributes); the
/// memory store derives it. Every window's stored `used` must be its
/// `spent + reserved`, or the rendering of a plan's changes is wrong.
async fn assert_used_is_spent_plus_reserved(t: &TestApp, e: &EntityRef, case: usize) {
    use aws_sdk_dynamodb::types::AttributeValue as A;
    let out = t
        .client
        .get_item()
        .table_name(t.store.table())
        .key("pk", A::S(budget_core::store::dynamo::entity_pk(e)))
        .consistent_read(true)
        .send()
        .await
        .unwrap();
    let item = out.item().unwrap();
    let Some(A::M(windows)) = item.get("w") else {
        return;
    };
    let n = |w: &std::collections::HashMap<String, A>, f: &str| -> i128 {
        match w.get(f) {
            Some(A::N(v)) => v.parse().unwrap(),
            _ => panic!("case {case}: {f} missing"),
        }
    };
    for (id, w) in windows {
        let A::M(w) = w else { panic!("window") };
        assert_eq!(
            n(w, "used"),
            n(w, "spent") + n(w, "reserved"),
            "case {case}: window {id}: used = spent + reserved"
        );
    }
}

/// What a reader sees of an entity's windows.
async fn counters(store: &impl Reads, e: &EntityRef) -> Vec<(String, Money, Money, Option<i64>)> {
    let e = store.load(e).await.unwrap().unwrap();
    e.windows
        .iter()
        .map(|w| {
            (
                w.id(),
                w.spent,
                w.reserved,
                w.reset_at.map(|t| t.timestamp()),
            )
        })
        .collect()
}

#[tokio::test]
async fn both_stores_execute_the_same_plans_the_same_way() {
    // Through TestApp: it takes its turn at the emulator (see helpers.rs).
    let t = TestApp::new().await;
    let memory = MemoryStore::new();
    let now = at(NOW);
    let clock = t.clock();
    let mut rng = StdRng::seed_from_u64(7);
    let (mut reserved, mut refused, mut settled) = (0, 0, 0);
    for n in 0..60 {
        let (user, key) = case(&mut rng, n, now, &clock);
        for store in [&t.store as &dyn AdminStoreDyn, &memory] {
            store.create_both(&user, &key).await;
        }
        // Decide on the chain as read (the same in both), write in both.
        let chain = t.store.load_chain(&key.entity.id).await.unwrap().unwrap();
        let amount = Money::usd(rng.random_range(0..4));
        let r = reservation(n, &chain, amount, now);
        let in_dynamo = t.store.reserve(&chain, &r, now, &clock).await.unwrap();
        let in_memory = memory.reserve(&chain, &r, now, &clock).await.unwrap();
        assert_eq!(in_dynamo, in_memory, "case {n}: reserve");
        assert_eq!(
            counters(&t.store, &user.entity).await,
            counters(&memory, &user.entity).await,
            "case {n}: after reserve"
        );
        assert_used_is_spent_plus_reserved(&t, &user.entity, n).await;
        if in_dynamo != budget_core::store::ReserveWrite::Reserved {
            refused += 1;
            continue;
        }
        reserved += 1;
        // Settle it later (maybe past a boundary), as read and as held.
        let later = now + Duration::minutes(rng.random_range(0..90));
        let cost = Money::usd(rng.random_range(0..5));
        let read = if rng.random_bool(0.5) {
            Some(vec![t.store.load(&user.entity).await.unwrap().unwrap()])
        } else {
            None
        };
        let a = t
            .store
            .finish(&r, read.as_deref(), Finish::Settle(cost), later, &clock)
            .await
            .unwrap();
        let b = memory
            .finish(&r, read.as_deref(), Finish::Settle(cost), later, &clock)
            .await
            .unwrap();
        assert_eq!(a, b, "case {n}: settle");
        assert_eq!(
            counters(&t.store, &user.entity).await,
            counters(&memory, &user.entity).await,
            "case {n}: after settle"
        );
        assert_used_is_spent_plus_reserved(&t, &user.entity, n).await;
        settled += usize::from(a == budget_core::store::FinishWrite::Done);
    }
    println!("plans: 60 cases, {reserved} reserved, {refused} refused, {settled} settled alike");
    assert!(reserved > 5 && refused > 5, "both outcomes exercised");
}

/// Creating the same user and key in either store.
#[async_trait::async_trait]
trait AdminStoreDyn {
    async fn create_both(&self, user: &Entity, key: &Entity);
}

#[async_trait::async_trait]
impl<T: AdminStore> AdminStoreDyn for T {
    async fn create_both(&self, user: &Entity, key: &Entity) {
        assert_eq!(self.create(user).await.unwrap(), AdminWrite::Done);
        assert_eq!(self.create(key).await.unwrap(), AdminWrite::Done);
    }
}
