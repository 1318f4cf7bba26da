//! Test harness for the end-to-end tests in `tests/e2e/` (whose `TestApp`,
//! in `tests/e2e/helpers.rs`, wraps `TestTable`): a fresh table in the
//! DynamoDB emulator that `scripts/test.sh` started, and real API Gateway
//! event shapes (the `aws_lambda_events` fixtures in `tests/fixtures/`).

pub mod fault_proxy;

use std::time::Duration;

use aws_sdk_dynamodb::Client;
use budget_core::duration::ResetClock;
use budget_core::model::{Entity, EntityRef, Span, Window};
use budget_core::store::dynamo::DynamoStore;
use budget_core::store::table::create_table_with;
use budget_core::store::{prelude::*, AdminWrite};
use budget_core::{Money, Settings};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

/// A table of its own for one test, in the emulator named by
/// `AWS_ENDPOINT_URL_DYNAMODB`.
pub struct TestTable {
    pub client: Client,
    pub store: DynamoStore,
    pub settings: Settings,
}

impl TestTable {
    /// The same table through another endpoint (e.g. a fault proxy), with
    /// the given operation deadline.
    pub fn store_via(&self, endpoint: &str, timeout: Duration) -> DynamoStore {
        let config = self
            .client
            .config()
            .to_builder()
            .endpoint_url(endpoint)
            .timeout_config(
                aws_sdk_dynamodb::config::timeout::TimeoutConfig::builder()
                    .operation_timeout(timeout)
                    .operation_attempt_timeout(timeout.mul_f32(0.6))
                    .build(),
            )
            .build();
        DynamoStore::new(Client::from_conf(config), self.store.table())
    }

    pub async fn new() -> TestTable {
        TestTable::with_settings(&[]).await
    }

    /// `vars` override the settings' environment (TABLE_NAME is set here).
    /// The table has no stream (see `create_table_with`); `with_stream`
    /// makes one that has, exactly as `create_table` defines it.
    pub async fn with_settings(vars: &[(&str, &str)]) -> TestTable {
        TestTable::make(vars, false).await
    }

    /// The table exactly as production defines it, stream included.
    pub async fn with_stream(vars: &[(&str, &str)]) -> TestTable {
        TestTable::make(vars, true).await
    }

    async fn make(vars: &[(&str, &str)], stream: bool) -> TestTable {
        assert!(
            std::env::var("AWS_ENDPOINT_URL_DYNAMODB").is_ok(),
            "AWS_ENDPOINT_URL_DYNAMODB is not set: run the tests with scripts/test.sh (make test), which starts the DynamoDB emulator"
        );
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .try_init();
        let name = format!("edge-budget-test-{}", hex_id());
        let mut all: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        all.push(("TABLE_NAME".into(), name.clone()));
        let settings = Settings::from_lookup(|k| {
            all.iter()
                .rev()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
        })
        .expect("test settings");
        let client = DynamoStore::client_from_env(Duration::from_secs(30)).await;
        create_table_with(&client, &name, stream)
            .await
            .expect("create table");
        TestTable {
            store: DynamoStore::new(client.clone(), name),
            client,
            settings,
        }
    }

    pub fn clock(&self) -> ResetClock {
        self.settings.clock
    }

    /// Every item of the table, sorted by `pk`, as JSON — to prove that a
    /// refused request wrote nothing.
    pub async fn snapshot(&self) -> Vec<String> {
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .client
                .scan()
                .table_name(self.store.table())
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .expect("scan");
            for item in page.items() {
                let map: std::collections::BTreeMap<&String, Value> =
                    item.iter().map(|(k, v)| (k, canonical(v))).collect();
                items.push(serde_json::to_string(&map).unwrap_or_default());
            }
            start = page.last_evaluated_key().cloned();
            if start.is_none() {
                break;
            }
        }
        items.sort();
        items
    }

    /// Creates an entity with windows `(duration or "lifetime", max USD)`;
    /// for keys, `owner` names the user and team.
    pub async fn create(
        &self,
        entity: EntityRef,
        windows: &[(&str, f64)],
        user: Option<&str>,
        team: Option<&str>,
        now: DateTime<Utc>,
    ) -> Entity {
        let mut e = Entity::new(entity, now);
        for (span, max) in windows {
            let span = Span::parse_id(span).expect("window");
            e.windows.push(Window::open(
                span,
                Money::from_f64(*max).expect("max"),
                false,
                now,
                &self.clock(),
            ));
        }
        e.windows.sort_by_key(|w| w.span);
        e.user_id = user.map(str::to_string);
        e.team_id = team.map(str::to_string);
        assert_eq!(
            self.store.create(&e).await.expect("create"),
            AdminWrite::Done
        );
        e
    }

    /// A key (plaintext) for `user`/`team`, with key windows.
    pub async fn key(
        &self,
        windows: &[(&str, f64)],
        user: Option<&str>,
        team: Option<&str>,
        now: DateTime<Utc>,
    ) -> String {
        let key = budget_core::keys::generate_key();
        self.create(
            EntityRef::key(budget_core::keys::hash_key(&key)),
            windows,
            user,
            team,
            now,
        )
        .await;
        key
    }

    pub async fn window(&self, entity: &EntityRef, span: &str) -> Window {
        let e = self
            .store
            .load(entity)
            .await
            .expect("load")
            .expect("entity exists");
        e.window(span).cloned().expect("window exists")
    }
}

/// An attribute value as JSON with sorted maps, so equal items print equal.
fn canonical(v: &aws_sdk_dynamodb::types::AttributeValue) -> Value {
    use aws_sdk_dynamodb::types::AttributeValue as A;
    match v {
        A::S(s) => json!({"S": s}),
        A::N(n) => json!({"N": n}),
        A::Bool(b) => json!({"BOOL": b}),
        A::Null(_) => json!({"NULL": true}),
        A::L(l) => json!({"L": l.iter().map(canonical).collect::<Vec<_>>()}),
        A::M(m) => {
            let sorted: std::collections::BTreeMap<&String, Value> =
                m.iter().map(|(k, v)| (k, canonical(v))).collect();
            json!({"M": sorted})
        }
        other => json!({"other": format!("{other:?}")}),
    }
}

pub fn hex_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).expect("fixture JSON")
}

/// An HTTP API (payload 2.0) REQUEST authorizer event carrying `key` as a
/// bearer token and, if given, an `x-budget-reserve` estimate.
pub fn http_api_event(key: &str, estimate: Option<&str>, request_id: &str) -> Value {
    let mut e = fixture("example-apigw-v2-custom-authorizer-v2-request.json");
    e["headers"]["authorization"] = json!(format!("Bearer {key}"));
    if let Some(est) = estimate {
        e["headers"]["x-budget-reserve"] = json!(est);
    }
    e["identitySource"] = json!([format!("Bearer {key}")]);
    e["requestContext"]["requestId"] = json!(request_id);
    e
}

/// A REST API REQUEST authorizer event with `x-api-key`.
pub fn rest_request_event(key: &str, estimate: Option<&str>, request_id: &str) -> Value {
    let mut e = fixture("example-apigw-custom-auth-request-type-request.json");
    e["headers"]["x-api-key"] = json!(key);
    if let Some(est) = estimate {
        e["headers"]["x-budget-reserve"] = json!(est);
    }
    e["requestContext"]["requestId"] = json!(request_id);
    e
}

/// A REST API TOKEN authorizer event.
pub fn rest_token_event(token: &str) -> Value {
    let mut e = fixture("example-apigw-custom-auth-request.json");
    e["authorizationToken"] = json!(token);
    e
}

/// An EventBridge scheduled event, as the reset schedule sends it.
pub fn schedule_event() -> Value {
    fixture("example-eventbridge-schedule.json")
}

/// An API Gateway HTTP API (payload 2.0, IAM-authorized) request to
/// `method path` with `body` and headers, as lambda_http receives it.
pub fn http_request(
    method: &str,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> lambda_http::Request {
    let mut e = fixture("example-apigw-v2-request-iam.json");
    let (path_only, query) = path.split_once('?').unwrap_or((path, ""));
    e["rawPath"] = json!(path_only);
    e["rawQueryString"] = json!(query);
    let mut params = serde_json::Map::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        params.insert(k.to_string(), json!(v));
    }
    e["queryStringParameters"] = Value::Object(params);
    e["routeKey"] = json!(format!("{method} {path_only}"));
    e["requestContext"]["http"]["method"] = json!(method);
    e["requestContext"]["http"]["path"] = json!(path_only);
    e["body"] = json!(body);
    e["isBase64Encoded"] = json!(false);
    let mut h = serde_json::Map::new();
    h.insert("content-type".into(), json!("application/json"));
    for (k, v) in headers {
        h.insert(k.to_string(), json!(v));
    }
    e["headers"] = Value::Object(h);
    e["cookies"] = json!([]);
    lambda_http::request::from_str(&e.to_string()).expect("API Gateway request event")
}

/// Status and JSON body of a lambda_http response.
pub fn response_json(response: lambda_http::Response<lambda_http::Body>) -> (u16, Value) {
    let status = response.status().as_u16();
    let body = match response.body() {
        lambda_http::Body::Text(t) => t.clone(),
        lambda_http::Body::Binary(b) => String::from_utf8_lossy(b).to_string(),
        lambda_http::Body::Empty => String::new(),
        _ => String::new(),
    };
    (
        status,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

pub fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .expect("RFC 3339")
        .with_timezone(&Utc)
}

/// One call of an AWS JSON-protocol API (`X-Amz-Target: <target>`) on the
/// emulator at `endpoint`, for services this package has no SDK client
/// of (the alert tests read EventBridge's deliveries from an SQS queue).
/// The request is signed with a placeholder signature: the emulator reads
/// the service from the credential scope and checks nothing else.
pub async fn aws_json(endpoint: &str, service: &str, target: &str, body: &Value) -> Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let hostport = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = tokio::net::TcpStream::connect(hostport)
        .await
        .expect("the emulator accepts connections");
    let body = body.to_string();
    let request = format!(
        "POST / HTTP/1.1\r\nHost: {hostport}\r\nX-Amz-Target: {target}\r\n\
         Content-Type: application/x-amz-json-1.0\r\n\
         Authorization: AWS4-HMAC-SHA256 Credential=local/20261128/us-east-1/{service}/aws4_request, SignedHeaders=host, Signature=0\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.expect("read");
    let text = String::from_utf8_lossy(&answer);
    let (head, payload) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(
        head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"),
        "{target}: {text}"
    );
    serde_json::from_str(payload).unwrap_or(Value::Null)
}
