//! CPU time of one warm authorization, without I/O (criterion).
//!
//! The handler is reached whole — `authorize::handle_logged`, the function's own
//! entry point — over a store that answers from memory, so what is timed
//! is exactly the function's CPU work: parsing the authorizer event into
//! its `aws_lambda_events` type, reading the key and the estimate, hashing
//! the key, the admission decision on the cached chain, the reservation,
//! the decision's log line with its metrics (rendered, not printed),
//! and building the response. Its parts are timed alone too, and one more
//! figure adds the AWS SDK's share (building the `TransactWriteItems`
//! request, JSON, SigV4 signing, parsing the answer) over an HTTP connector
//! that answers at once.
//!
//! `scripts/bench.sh` (`make bench`) runs this first; `benches/latency.rs`
//! then prints the medians in its table.

use std::hint::black_box;

use async_trait::async_trait;
use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region, RuntimeComponents};
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::http::StatusCode;
use aws_smithy_types::body::SdkBody;
use budget_core::decision::admit;
use budget_core::duration::ResetClock;
use budget_core::keys::{generate_key, hash_key};
use budget_core::model::{Chain, Entity, EntityRef, Reservation, Span, Window};
use budget_core::service::Authorizer;
use budget_core::store::dynamo::DynamoStore;
use budget_core::store::memory::MemoryStore;
use budget_core::store::{
    AdminStore, AdminWrite, BudgetStore, Finish, FinishWrite, Reads, ReserveWrite, StoreError,
};
use budget_core::{Money, Settings};
use chrono::{DateTime, Utc};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use serde_json::Value;

/// Three windows on each of key, user and team, far from full.
fn chain(key_hash: &str, now: DateTime<Utc>, clock: &ResetClock) -> Chain {
    let entity = |r: EntityRef| {
        let mut e = Entity::new(r, now);
        for (span, max) in [("1d", 1.0e6), ("7d", 5.0e6), ("30d", 1.0e7)] {
            let mut w = Window::open(
                Span::parse_id(span).expect("span"),
                Money::from_f64(max).expect("max"),
                false,
                now,
                clock,
            );
            w.spent = Money::usd(12);
            w.reserved = Money::usd(3);
            e.windows.push(w);
        }
        e.windows.sort_by_key(|w| w.span);
        e
    };
    let mut key = entity(EntityRef::key(key_hash));
    key.user_id = Some("user-bench".into());
    key.team_id = Some("team-bench".into());
    Chain {
        key,
        scopes: vec![
            entity(EntityRef::user("user-bench")),
            entity(EntityRef::team("team-bench")),
        ],
    }
}

/// The memory store (`budget_core::store::memory`), holding the chain,
/// with one difference: `reserve` commits without recording, or goes
/// through `sdk` (a real `DynamoStore` over an instant connector). Every
/// iteration sends the same event (the same request id), which the real
/// store would rightly treat as a retry of the first.
struct BenchStore {
    memory: MemoryStore,
    sdk: Option<DynamoStore>,
}

#[async_trait]
impl Reads for BenchStore {
    async fn load(&self, e: &EntityRef) -> Result<Option<Entity>, StoreError> {
        self.memory.load(e).await
    }
    async fn load_many(&self, e: &[EntityRef]) -> Result<Vec<Entity>, StoreError> {
        self.memory.load_many(e).await
    }
}

#[async_trait]
impl BudgetStore for BenchStore {
    async fn load_chain(&self, key_hash: &str) -> Result<Option<Chain>, StoreError> {
        self.memory.load_chain(key_hash).await
    }
    async fn reserve(
        &self,
        chain: &Chain,
        reservation: &Reservation,
        now: DateTime<Utc>,
        clock: &ResetClock,
    ) -> Result<ReserveWrite, StoreError> {
        match &self.sdk {
            Some(store) => store.reserve(chain, reservation, now, clock).await,
            None => Ok(ReserveWrite::Reserved),
        }
    }
    async fn reservation(&self, id: &str) -> Result<Option<Reservation>, StoreError> {
        self.memory.reservation(id).await
    }
    async fn write_all(
        &self,
        writes: &[budget_core::plan::EntityWrite],
    ) -> Result<budget_core::store::PlanWrite, StoreError> {
        self.memory.write_all(writes).await
    }
    async fn finish(
        &self,
        r: &Reservation,
        e: Option<&[Entity]>,
        f: Finish,
        now: DateTime<Utc>,
        clock: &ResetClock,
    ) -> Result<FinishWrite, StoreError> {
        self.memory.finish(r, e, f, now, clock).await
    }
}

/// A memory store holding `chain`.
fn memory_with(chain: &Chain, rt: &tokio::runtime::Runtime) -> MemoryStore {
    let memory = MemoryStore::new();
    for e in chain.scopes.iter().chain([&chain.key]) {
        let created = rt.block_on(memory.create(e)).expect("create");
        assert_eq!(created, AdminWrite::Done);
    }
    memory
}

/// An HTTP client whose every request succeeds at once with `{}` (what
/// DynamoDB answers a committed `TransactWriteItems`).
#[derive(Debug, Clone)]
struct InstantDynamo;

impl HttpConnector for InstantDynamo {
    fn call(&self, _request: HttpRequest) -> HttpConnectorFuture {
        let status = StatusCode::try_from(200u16).expect("status");
        HttpConnectorFuture::ready(Ok(HttpResponse::new(status, SdkBody::from("{}"))))
    }
}

impl HttpClient for InstantDynamo {
    fn http_connector(
        &self,
        _: &HttpConnectorSettings,
        _: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(self.clone())
    }
}

fn offline_dynamo() -> DynamoStore {
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("AKIDBENCH", "secret", None, None, "bench"))
        .http_client(InstantDynamo)
        .build();
    DynamoStore::new(aws_sdk_dynamodb::Client::from_conf(config), "edge-budget")
}

fn settings() -> Settings {
    Settings::from_lookup(|name| (name == "TABLE_NAME").then(|| "edge-budget".to_string()))
        .expect("settings")
}

fn authorize_cpu(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let settings = settings();
    let clock = settings.clock;
    let now = Utc::now();
    let key = generate_key();
    let chain = chain(&hash_key(&key), now, &clock);
    // What the Lambda runtime hands the function: the event's bytes.
    let event_bytes = serde_json::to_vec(&edge_budget::http_api_event(&key, Some("0.05"), "req-1"))
        .expect("event");
    let event: Value = serde_json::from_slice(&event_bytes).expect("event");

    let memory = Authorizer::new(
        BenchStore {
            memory: memory_with(&chain, &rt),
            sdk: None,
        },
        settings.clone(),
    );
    let with_sdk = Authorizer::new(
        BenchStore {
            memory: memory_with(&chain, &rt),
            sdk: Some(offline_dynamo()),
        },
        settings.clone(),
    );
    // Warm both: the chain is in the authorizer's memory from here on.
    for a in [&memory, &with_sdk] {
        let answer = rt
            .block_on(authorize::handle_logged(a, &discard(), event.clone(), now))
            .expect("answer");
        assert_eq!(answer["isAuthorized"], Value::Bool(true), "{answer}");
    }
    let answer = rt
        .block_on(authorize::handle_logged(
            &memory,
            &discard(),
            event.clone(),
            now,
        ))
        .expect("answer");

    let mut g = c.benchmark_group("authorize_cpu");
    g.bench_function("event_json", |b| {
        b.iter(|| serde_json::from_slice::<Value>(black_box(&event_bytes)).expect("json"))
    });
    let estimate = Money::parse_decimal("0.05").expect("estimate");
    g.bench_function("admit_3x3", |b| {
        b.iter(|| admit(black_box(&chain), black_box(estimate), now, &clock))
    });
    g.bench_function("response_json", |b| {
        b.iter(|| serde_json::to_vec(black_box(&answer)).expect("json"))
    });
    g.bench_function("handler_memory_store", |b| {
        b.iter_batched(
            || event.clone(),
            |e| rt.block_on(authorize::handle_logged(&memory, &discard(), e, now)),
            BatchSize::SmallInput,
        )
    });
    // Hostile estimates: before the hardening `0e2147483647` took 2.4 s of
    // CPU; now the whole handler answers it like any request.
    let mut hostile = event.clone();
    hostile["headers"]["x-budget-reserve"] = Value::from("0e2147483647");
    g.bench_function("handler_hostile_estimate_0e2147483647", |b| {
        b.iter_batched(
            || hostile.clone(),
            |e| rt.block_on(authorize::handle_logged(&memory, &discard(), e, now)),
            BatchSize::SmallInput,
        )
    });
    // The decision's log line with its embedded metrics, alone (it is
    // inside every handler figure above).
    let denied =
        budget_core::service::AuthorizeOutcome::Denied(Box::new(budget_core::decision::Denial {
            entity: budget_core::model::EntityRef::user("user-123"),
            span: budget_core::model::Span::parse_id("1d").expect("span"),
            max: Money::usd(150),
            spend: Money::usd(150),
            reserved: Money::ZERO,
            estimate: Money::usd(1),
            reset_at: Some(now),
            retry_after: Some(1),
        }));
    let context = budget_core::metrics::AuthorizeContext {
        request_id: Some("c6af9ac6-7b61-11e6-9a41-93e8deadbeef"),
        key: Some("sk-bench-0123456789abcdef0123456789abcdef"),
        event: "http_api",
        latency: std::time::Duration::from_millis(3),
        stats: Default::default(),
    };
    g.bench_function("log_line_with_metrics", |b| {
        b.iter(|| {
            budget_core::metrics::authorize_record(black_box(&denied), &context)
                .render("EdgeBudget", now)
        })
    });
    let digits = "9".repeat(100_000);
    g.bench_function("parse_amount_100kb_of_digits", |b| {
        b.iter(|| Money::parse_decimal(black_box(&digits)))
    });
    g.bench_function("bytes_to_bytes_memory_store", |b| {
        b.iter(|| {
            let e: Value = serde_json::from_slice(black_box(&event_bytes)).expect("json");
            let answer = rt
                .block_on(authorize::handle_logged(&memory, &discard(), e, now))
                .expect("answer");
            serde_json::to_vec(&answer).expect("json")
        })
    });
    g.bench_function("bytes_to_bytes_with_sdk", |b| {
        b.iter(|| {
            let e: Value = serde_json::from_slice(black_box(&event_bytes)).expect("json");
            let answer = rt
                .block_on(authorize::handle_logged(&with_sdk, &discard(), e, now))
                .expect("answer");
            serde_json::to_vec(&answer).expect("json")
        })
    });
    g.finish();
}

criterion_group!(benches, authorize_cpu);
criterion_main!(benches);

/// The decision's log line is rendered, as in Lambda, but not printed.
fn discard() -> budget_core::metrics::Emitter {
    budget_core::metrics::Emitter::discard("EdgeBudget")
}
