//! The test app every end-to-end test starts from: a fresh table in the
//! DynamoDB emulator (`edge_budget::TestTable`), the five functions' API
//! calls as methods, and builders for the keys, users and teams a test
//! needs. A new test writes
//!
//! ```ignore
//! let app = TestApp::new().await;
//! app.user("u").window("1d", 150.0).create().await;
//! let key = app.key().user("u").create().await;
//! let answer = app.authorize(&key, Some("1")).await;
//! assert!(allowed(&answer), "{answer}");
//! let (status, body) = app.settle(&reservation_id(&answer), 0.5).await;
//! ```

use std::ops::Deref;
use std::time::Duration;

use budget_core::keys::hash_key;
use budget_core::metrics::Emitter;
use budget_core::model::{Entity, EntityRef};
use budget_core::service::Authorizer;
use budget_core::store::dynamo::DynamoStore;
use budget_core::Money;
use chrono::{DateTime, Utc};
use edge_budget::{at, hex_id, http_api_event, http_request, response_json, TestTable};
use serde_json::{json, Value};

/// The instant every test runs at unless it says otherwise: a Saturday
/// afternoon, 8 h 52 min before the day's windows reset.
pub const NOW: &str = "2026-11-28T15:08:00Z";

/// The admin API's bearer secret in every test.
pub const MASTER: &str = "sk-master-e2e-0123456789abcdef";

/// The DynamoDB emulator's URL, as scripts/test.sh exports it.
pub fn emulator() -> String {
    std::env::var("AWS_ENDPOINT_URL_DYNAMODB").expect("run through scripts/test.sh")
}

/// Turns at the emulator, which is single-threaded: now that every test
/// shares one binary, a long or tightly timed test beside others would run
/// past its deadlines (a timed-out store request fails closed, which the
/// tests rightly count as wrong). Every `TestApp` holds a shared turn while
/// it lives; the load run (`load::`, 64 concurrent tasks) and the fault
/// tests (`faults::`, a 600 ms deadline) take it alone (`heavy_run`), as
/// they had it when each test file was a binary of its own.
static EMULATOR: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// The emulator to this test alone until the guard is dropped; make its
/// apps with `TestApp::alone`. Hold the guard for the whole test.
pub async fn heavy_run() -> Alone {
    Alone(EMULATOR.write().await)
}

/// Proof that the holder has the emulator to itself (see `heavy_run`).
pub struct Alone(#[allow(dead_code)] tokio::sync::RwLockWriteGuard<'static, ()>);

/// A JSON number as f64 (NaN if it is not one).
pub fn usd(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// A JSON number as Money; panics if it is not an amount.
pub fn money(v: &Value) -> Money {
    Money::from_f64(v.as_f64().expect("a number")).expect("an amount")
}

/// Whether a simple authorizer response admitted the request.
pub fn allowed(answer: &Value) -> bool {
    answer["isAuthorized"].as_bool().expect("simple response")
}

/// The reservation id of an admitting simple authorizer response.
pub fn reservation_id(answer: &Value) -> String {
    answer["context"]["reservation_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no reservation_id in {answer}"))
        .to_string()
}

/// One request of `key` with `estimate` through the authorizer function
/// `a` (a fresh request id); the simple response.
pub async fn authorize_via(
    a: &Authorizer<DynamoStore>,
    key: &str,
    estimate: Option<&str>,
    when: DateTime<Utc>,
) -> Value {
    authorize::handle(a, http_api_event(key, estimate, &hex_id()), when)
        .await
        .expect("an answer")
}

/// A fresh table, the settings it was made with, and one authorizer
/// instance (warm after its first request). Derefs to the `TestTable`, so
/// `app.store`, `app.settings`, `app.snapshot()`, `app.window(..)` work.
pub struct TestApp {
    pub table: TestTable,
    /// A shared turn at the emulator (none for the apps of a heavy run).
    _turn: Option<tokio::sync::RwLockReadGuard<'static, ()>>,
    pub authorizer: Authorizer<DynamoStore>,
    /// When requests are answered and fixtures created (`NOW`).
    pub now: DateTime<Utc>,
    /// Where the app's authorize, settle-spend and reset calls write
    /// their log lines (memory: `app.lines()` reads them back).
    pub emitter: Emitter,
}

impl Deref for TestApp {
    type Target = TestTable;

    fn deref(&self) -> &TestTable {
        &self.table
    }
}

impl TestApp {
    pub async fn new() -> TestApp {
        TestApp::with_settings(&[]).await
    }

    /// `vars` override the settings' environment (see `TestTable`).
    pub async fn with_settings(vars: &[(&str, &str)]) -> TestApp {
        let turn = EMULATOR.read().await;
        TestApp::make(vars, Some(turn)).await
    }

    /// An app whose table has the stream production has (the alert tests
    /// that read it, the template's table comparison).
    pub async fn with_stream() -> TestApp {
        let turn = EMULATOR.read().await;
        let table = TestTable::with_stream(&[]).await;
        TestApp::assemble(table, Some(turn))
    }

    /// An app of a heavy run, which has the emulator to itself already.
    pub async fn alone(_alone: &Alone, vars: &[(&str, &str)]) -> TestApp {
        TestApp::make(vars, None).await
    }

    async fn make(
        vars: &[(&str, &str)],
        turn: Option<tokio::sync::RwLockReadGuard<'static, ()>>,
    ) -> TestApp {
        let table = TestTable::with_settings(vars).await;
        TestApp::assemble(table, turn)
    }

    fn assemble(
        table: TestTable,
        turn: Option<tokio::sync::RwLockReadGuard<'static, ()>>,
    ) -> TestApp {
        let authorizer = Authorizer::new(table.store.clone(), table.settings.clone());
        TestApp {
            table,
            _turn: turn,
            authorizer,
            now: at(NOW),
            emitter: Emitter::memory("EdgeBudget"),
        }
    }

    /// A new authorizer instance (a cold cache) on the test table.
    pub fn authorizer(&self) -> Authorizer<DynamoStore> {
        self.authorizer_on(self.store.clone())
    }

    /// A new authorizer instance on `store` (a proxied or counted one).
    pub fn authorizer_on(&self, store: DynamoStore) -> Authorizer<DynamoStore> {
        Authorizer::new(store, self.settings.clone())
    }

    /// Another store (and so another client) on the same table.
    pub fn another_store(&self) -> DynamoStore {
        DynamoStore::new(self.client.clone(), self.store.table().to_string())
    }

    /// The test table through a fault proxy started on the emulator, with
    /// the given operation deadline.
    pub async fn proxied(
        &self,
        timeout: Duration,
    ) -> (edge_budget::fault_proxy::FaultProxy, DynamoStore) {
        let proxy = edge_budget::fault_proxy::FaultProxy::start(&emulator()).await;
        let store = self.store_via(&proxy.endpoint(), timeout);
        (proxy, store)
    }

    // ---- authorize ----

    /// One request of `key` through the app's authorizer at `now`.
    pub async fn authorize(&self, key: &str, estimate: Option<&str>) -> Value {
        self.authorize_at(key, estimate, self.now).await
    }

    pub async fn authorize_at(
        &self,
        key: &str,
        estimate: Option<&str>,
        when: DateTime<Utc>,
    ) -> Value {
        let event = http_api_event(key, estimate, &hex_id());
        authorize::handle_logged(&self.authorizer, &self.emitter, event, when)
            .await
            .expect("an answer")
    }

    /// The log lines the app's calls wrote, parsed, oldest first.
    pub fn lines(&self) -> Vec<Value> {
        self.emitter.lines()
    }

    // ---- reset ----

    /// One run of the reset job at `when` (a scheduled event).
    pub async fn reset_at(&self, when: DateTime<Utc>) -> budget_core::service::ResetSummary {
        let event = edge_budget::schedule_event();
        reset::handle_logged(&self.store, &self.settings, &self.emitter, event, when).await
    }

    // ---- settle-spend ----

    /// `POST path` with `body` (JSON, or any text) to settle-spend through
    /// `store` at `when`; the raw response (for its headers).
    pub async fn settle_spend_via(
        &self,
        store: &DynamoStore,
        path: &str,
        body: impl std::fmt::Display,
        when: DateTime<Utc>,
    ) -> lambda_http::Response<lambda_http::Body> {
        let request = http_request("POST", path, &body.to_string(), &[]);
        settle_spend::handle_logged(store, &self.settings, &self.emitter, request, when).await
    }

    /// `POST path` with `body` to settle-spend at `now`.
    pub async fn settle_spend(&self, path: &str, body: Value) -> (u16, Value) {
        response_json(
            self.settle_spend_via(&self.store, path, body, self.now)
                .await,
        )
    }

    /// `POST /spend/settle` of reservation `id` with `cost` at `now`.
    pub async fn settle(&self, id: &str, cost: f64) -> (u16, Value) {
        self.settle_at(id, cost, self.now).await
    }

    pub async fn settle_at(&self, id: &str, cost: f64, when: DateTime<Utc>) -> (u16, Value) {
        let body = json!({"reservation_id": id, "cost": cost});
        response_json(
            self.settle_spend_via(&self.store, "/spend/settle", body, when)
                .await,
        )
    }

    /// `POST /spend/release` of reservation `id` at `now`.
    pub async fn release(&self, id: &str) -> (u16, Value) {
        self.release_at(id, self.now).await
    }

    pub async fn release_at(&self, id: &str, when: DateTime<Utc>) -> (u16, Value) {
        let body = json!({"reservation_id": id});
        response_json(
            self.settle_spend_via(&self.store, "/spend/release", body, when)
                .await,
        )
    }

    // ---- admin ----

    /// `request` to the admin function (master key `MASTER`) through
    /// `store` at `now`; the raw response (for its headers).
    pub async fn admin_handle(
        &self,
        store: &DynamoStore,
        request: lambda_http::Request,
    ) -> lambda_http::Response<lambda_http::Body> {
        admin::handle(store, &self.settings, MASTER, request, self.now).await
    }

    /// `method path` with `body` and the master key, through `store`, at `when`.
    pub async fn admin_via(
        &self,
        store: &DynamoStore,
        when: DateTime<Utc>,
        method: &str,
        path: &str,
        body: Value,
    ) -> (u16, Value) {
        let auth = format!("Bearer {MASTER}");
        let text = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        let request = http_request(method, path, &text, &[("authorization", &auth)]);
        response_json(admin::handle(store, &self.settings, MASTER, request, when).await)
    }

    /// `method path` with `body` (none if null) and the master key, at `now`.
    pub async fn admin(&self, method: &str, path: &str, body: Value) -> (u16, Value) {
        self.admin_at(self.now, method, path, body).await
    }

    pub async fn admin_at(
        &self,
        when: DateTime<Utc>,
        method: &str,
        path: &str,
        body: Value,
    ) -> (u16, Value) {
        self.admin_via(&self.store, when, method, path, body).await
    }

    /// `POST path`; asserts a 200 and answers its body.
    pub async fn post(&self, path: &str, body: Value) -> Value {
        let (status, answer) = self.admin("POST", path, body.clone()).await;
        assert_eq!(status, 200, "POST {path} {body}: {answer}");
        answer
    }

    /// `GET path`; asserts a 200 and answers its body.
    pub async fn get(&self, path: &str) -> Value {
        let (status, answer) = self.admin("GET", path, Value::Null).await;
        assert_eq!(status, 200, "GET {path}: {answer}");
        answer
    }

    pub async fn user_info(&self, id: &str) -> Value {
        self.get(&format!("/user/info?user_id={id}")).await
    }

    pub async fn team_info(&self, id: &str) -> Value {
        self.get(&format!("/team/info?team_id={id}")).await
    }

    pub async fn key_info(&self, key: &str) -> Value {
        self.get(&format!("/key/info?key={key}")).await
    }

    /// Asserts a 400 naming `param` whose message contains `message`, and
    /// that the table is unchanged.
    pub async fn refused(&self, method: &str, path: &str, body: Value, param: &str, message: &str) {
        let before = self.snapshot().await;
        let (status, answer) = self.admin(method, path, body.clone()).await;
        assert_eq!(status, 400, "{method} {path} {body}: {answer}");
        assert_eq!(answer["error"]["param"], param, "{answer}");
        let text = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(text.contains(message), "{text:?} lacks {message:?}");
        assert_eq!(
            self.snapshot().await,
            before,
            "a refused request wrote nothing"
        );
    }

    // ---- fixtures, straight into the store ----

    /// A user to create: `app.user("u").window("1d", 150.0).create().await`.
    pub fn user(&self, id: &str) -> EntityBuilder<'_> {
        EntityBuilder::new(self, EntityRef::user(id))
    }

    /// A team to create: `app.team("t").window("1d", 150.0).create().await`.
    pub fn team(&self, id: &str) -> EntityBuilder<'_> {
        EntityBuilder::new(self, EntityRef::team(id))
    }

    /// A key to create; `create()` answers its plaintext:
    /// `app.key().user("u").team("t").window("1d", 10.0).create().await`.
    pub fn key(&self) -> KeyBuilder<'_> {
        KeyBuilder(EntityBuilder::new(self, EntityRef::key(String::new())))
    }

    /// A key of a fresh user and a fresh team, each (and the key) with the
    /// windows given; the key's plaintext and the three entities.
    pub async fn chain(&self, windows: &[(&str, f64)]) -> (String, [EntityRef; 3]) {
        let (user, team) = (format!("u-{}", hex_id()), format!("t-{}", hex_id()));
        self.user(&user).windows(windows).create().await;
        self.team(&team).windows(windows).create().await;
        let key = self
            .key()
            .user(&user)
            .team(&team)
            .windows(windows)
            .create()
            .await;
        let refs = [
            EntityRef::key(hash_key(&key)),
            EntityRef::user(user),
            EntityRef::team(team),
        ];
        (key, refs)
    }
}

/// A user, team or key to create with `TestTable::create`, at the app's
/// `now` unless `at` says otherwise.
pub struct EntityBuilder<'a> {
    app: &'a TestApp,
    entity: EntityRef,
    windows: Vec<(String, f64)>,
    user: Option<String>,
    team: Option<String>,
    now: DateTime<Utc>,
}

impl<'a> EntityBuilder<'a> {
    fn new(app: &'a TestApp, entity: EntityRef) -> EntityBuilder<'a> {
        EntityBuilder {
            app,
            entity,
            windows: Vec::new(),
            user: None,
            team: None,
            now: app.now,
        }
    }

    /// A window: a duration (`"1d"`, `"lifetime"`) and its max in USD.
    pub fn window(mut self, span: &str, max: f64) -> Self {
        self.windows.push((span.to_string(), max));
        self
    }

    pub fn windows(mut self, windows: &[(&str, f64)]) -> Self {
        self.windows
            .extend(windows.iter().map(|(s, m)| (s.to_string(), *m)));
        self
    }

    /// The owning user (of a key).
    pub fn user(mut self, id: &str) -> Self {
        self.user = Some(id.to_string());
        self
    }

    /// The team (of a key or a user).
    pub fn team(mut self, id: &str) -> Self {
        self.team = Some(id.to_string());
        self
    }

    /// Owners that may be absent.
    pub fn owners(mut self, user: Option<&str>, team: Option<&str>) -> Self {
        self.user = user.map(str::to_string);
        self.team = team.map(str::to_string);
        self
    }

    /// Created at `when` instead of the app's `now`.
    pub fn at(mut self, when: DateTime<Utc>) -> Self {
        self.now = when;
        self
    }

    pub async fn create(self) -> Entity {
        let windows: Vec<(&str, f64)> = self.windows.iter().map(|(s, m)| (&s[..], *m)).collect();
        self.app
            .create(
                self.entity,
                &windows,
                self.user.as_deref(),
                self.team.as_deref(),
                self.now,
            )
            .await
    }
}

/// A key to create (a fresh plaintext); the same builder as a user's.
pub struct KeyBuilder<'a>(EntityBuilder<'a>);

impl<'a> KeyBuilder<'a> {
    pub fn window(self, span: &str, max: f64) -> Self {
        KeyBuilder(self.0.window(span, max))
    }

    pub fn windows(self, windows: &[(&str, f64)]) -> Self {
        KeyBuilder(self.0.windows(windows))
    }

    pub fn user(self, id: &str) -> Self {
        KeyBuilder(self.0.user(id))
    }

    pub fn team(self, id: &str) -> Self {
        KeyBuilder(self.0.team(id))
    }

    pub fn owners(self, user: Option<&str>, team: Option<&str>) -> Self {
        KeyBuilder(self.0.owners(user, team))
    }

    pub fn at(self, when: DateTime<Utc>) -> Self {
        KeyBuilder(self.0.at(when))
    }

    /// Creates the key; answers its plaintext.
    pub async fn create(self) -> String {
        let b = self.0;
        let windows: Vec<(&str, f64)> = b.windows.iter().map(|(s, m)| (&s[..], *m)).collect();
        b.app
            .table
            .key(&windows, b.user.as_deref(), b.team.as_deref(), b.now)
            .await
    }
}

/// The DynamoDB operation a request names (its `X-Amz-Target` header,
/// `DynamoDB_20120810.GetItem` → `GetItem`), for interceptors that count.
pub fn operation_of(
    context: &aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef<'_>,
) -> String {
    let target = context
        .request()
        .headers()
        .get("x-amz-target")
        .unwrap_or("?");
    target.rsplit('.').next().unwrap_or(target).to_string()
}

/// The test table's store on a client that runs `interceptor` on every
/// request (to count what an operation sends).
pub fn store_with(
    t: &TestTable,
    interceptor: impl aws_sdk_dynamodb::config::Intercept + 'static,
) -> DynamoStore {
    let config = t
        .client
        .config()
        .to_builder()
        .interceptor(interceptor)
        .build();
    DynamoStore::new(aws_sdk_dynamodb::Client::from_conf(config), t.store.table())
}
