//! `make local`'s stand-in for API Gateway: the routes `template.yaml`
//! deploys, in front of the functions that `cargo lambda watch` runs.
//!
//! - `ANY /<stage>/{proxy+}` (REST API, the default) or `ANY /{proxy+}`
//!   (HTTP API): the request goes to the real authorize function, as an
//!   authorizer event of the shape API Gateway sends (REST `REQUEST` or HTTP
//!   API payload 2.0) through the Lambda invoke API
//!   (`POST /2015-03-31/functions/authorize/invocations`). An allowed request
//!   is forwarded to the upstream with the headers the template maps
//!   (`x-budget-reservation-id`, `x-edge-budget-gateway`) and without the
//!   client's `x-budget-*`; the answer streams back chunk by chunk. A denied
//!   one gets what the deployed API answers: the REST API's `ACCESS_DENIED`
//!   gateway response (429 and the denial) or `UNAUTHORIZED` (401); the HTTP
//!   API's bare 403.
//! - `POST /spend/settle|release` and
//!   `ANY /key|user|team|organization|customer|end_user|tag/{proxy+}`: the
//!   settle-spend and admin functions (through cargo lambda's function URL
//!   emulation). IAM is not emulated: these routes need no signature here.
//!
//! A key holder is untrusted: request bodies and headers are bounded, every
//! header the gateway owns is overwritten, and no input panics.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub mod mock;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;
type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// The REST API's `ACCESS_DENIED` gateway response body, exactly as
/// `template.yaml` declares it (`tests/e2e/gateway.rs` compares them).
pub const REST_DENIAL_TEMPLATE: &str = r#"{"error": {"message": "$context.authorizer.message", "type": "$context.authorizer.reason", "entity": "$context.authorizer.entity", "entity_id": "$context.authorizer.entity_id", "budget_duration": "$context.authorizer.budget_duration", "max_budget": "$context.authorizer.max_budget", "spend": "$context.authorizer.spend", "reserved": "$context.authorizer.reserved", "estimate": "$context.authorizer.estimate", "reset_at": "$context.authorizer.reset_at", "retry_after": "$context.authorizer.retry_after"}}"#;

/// The REST API's `UNAUTHORIZED` gateway response body (an unknown or
/// missing key), as `template.yaml` declares it.
pub const REST_UNAUTHORIZED_BODY: &str =
    r#"{"error": {"message": "Missing or unknown API key.", "type": "invalid_key"}}"#;

/// Which of the template's two APIs to behave like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Api {
    /// `AWS::ApiGateway::RestApi` (the default): paths under `/<stage>`,
    /// denials as 429/401 gateway responses.
    Rest { stage: String },
    /// `AWS::ApiGatewayV2::Api` (`ApiType=http`): the `$default` stage, no
    /// path prefix, denials as a bare 403.
    Http,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub api: Api,
    /// `cargo lambda watch`'s address, e.g. `http://127.0.0.1:9000`.
    pub lambda_url: String,
    /// Base URL of the upstream (http only), without a trailing slash.
    pub upstream_url: String,
    /// Sent to the upstream in `x-edge-budget-gateway`, as API Gateway does.
    pub gateway_secret: String,
    /// API Gateway's payload limit (10 MB); larger bodies get a 413.
    pub max_body_bytes: usize,
    /// Bound on the request line and headers (hyper answers 431 past it).
    pub max_header_bytes: usize,
    /// API Gateway waits at most 10 s for an authorizer.
    pub authorizer_timeout: Duration,
    /// Until the upstream's status line and headers (the body then streams).
    pub upstream_timeout: Duration,
    /// Connections served at once; more wait for a free slot.
    pub max_connections: usize,
}

impl Config {
    /// Defaults with the two addresses that have none.
    pub fn new(api: Api, lambda_url: &str, upstream_url: &str) -> Config {
        Config {
            api,
            lambda_url: lambda_url.trim_end_matches('/').to_string(),
            upstream_url: upstream_url.trim_end_matches('/').to_string(),
            gateway_secret: random_hex(24),
            max_body_bytes: 10 * 1024 * 1024,
            max_header_bytes: 64 * 1024,
            authorizer_timeout: Duration::from_secs(10),
            upstream_timeout: Duration::from_secs(900),
            max_connections: 256,
        }
    }
}

pub struct Gateway {
    config: Config,
    client: HttpClient,
}

impl Gateway {
    pub fn new(config: Config) -> Arc<Gateway> {
        let client = Client::builder(TokioExecutor::new()).build_http();
        Arc::new(Gateway { config, client })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }
}

/// Serves `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, gateway: Arc<Gateway>) {
    let slots = Arc::new(Semaphore::new(gateway.config.max_connections));
    let max_buf = gateway.config.max_header_bytes.max(8192);
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let gateway = gateway.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let gateway = gateway.clone();
                async move { Ok::<_, Infallible>(gateway.handle(req, peer).await) }
            });
            let result = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .max_buf_size(max_buf)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
}

// ------------------------------------------------------------- answers

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

fn json_answer(status: StatusCode, body: &Value) -> Response<Body> {
    let mut response = Response::new(full(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn message(status: StatusCode, text: &str) -> Response<Body> {
    json_answer(status, &json!({ "message": text }))
}

/// What the deployed API answers for a path or method it has no route for.
fn no_route(api: &Api) -> Response<Body> {
    match api {
        Api::Rest { .. } => message(StatusCode::FORBIDDEN, "Missing Authentication Token"),
        Api::Http => message(StatusCode::NOT_FOUND, "Not Found"),
    }
}

/// API Gateway's substitution in gateway response templates:
/// `$context.authorizer.<name>` becomes the context's value as text, with
/// no escaping; a value the authorizer did not send becomes "".
pub fn render_gateway_template(template: &str, context: &Map<String, Value>) -> String {
    const VAR: &str = "$context.authorizer.";
    let mut out = String::with_capacity(template.len() + 256);
    let mut rest = template;
    while let Some(i) = rest.find(VAR) {
        out.push_str(&rest[..i]);
        rest = &rest[i + VAR.len()..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        match context.get(&rest[..end]) {
            Some(Value::String(text)) => out.push_str(text),
            Some(Value::Null) | None => {}
            Some(other) => out.push_str(&other.to_string()),
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

// -------------------------------------------------------------- routing

/// The route a path takes, after the stage prefix.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Settle,
    Admin,
    Upstream,
    None,
}

/// The paths the admin function answers (as the template routes them).
const ADMIN_PREFIXES: [&str; 7] = [
    "/key/",
    "/user/",
    "/team/",
    "/organization/",
    "/customer/",
    "/end_user/",
    "/tag/",
];

fn route_of(method: &Method, path: &str) -> Route {
    if path == "/spend/settle" || path == "/spend/release" {
        return if method == Method::POST {
            Route::Settle
        } else {
            Route::None
        };
    }
    for prefix in ADMIN_PREFIXES {
        if path.len() > prefix.len() && path.starts_with(prefix) {
            return Route::Admin;
        }
    }
    if path.len() > 1 {
        Route::Upstream
    } else {
        Route::None
    }
}

/// Headers that describe one connection, not the request (RFC 9110 §7.6.1),
/// plus what the gateway sets itself.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "content-length"
    )
}

/// Headers only the gateway may set on the way to the upstream.
fn is_gateway_owned(name: &HeaderName) -> bool {
    let n = name.as_str();
    n.starts_with("x-budget-") || n.starts_with("x-edge-budget-") || n == "x-api-key"
}

/// What the authorizer decided, read from its answer.
#[derive(Debug)]
enum Decision {
    Allow(Map<String, Value>),
    Deny(Map<String, Value>),
    /// The function's `Unauthorized` error (REST: 401).
    Unauthorized,
    /// Anything else: an error, a timeout, an answer of no known shape.
    Failure(String),
}

impl Gateway {
    pub async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let method = req.method().clone();
        let raw_path = req.uri().path().to_string();
        let response = self.route(req, peer).await;
        tracing::info!(%method, path = %raw_path, status = response.status().as_u16(), "request");
        response
    }

    async fn route(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let path = req.uri().path();
        let path = match &self.config.api {
            Api::Http => path.to_string(),
            Api::Rest { stage } => {
                let Some(rest) = path
                    .strip_prefix('/')
                    .and_then(|p| p.strip_prefix(stage.as_str()))
                else {
                    return message(StatusCode::FORBIDDEN, "Forbidden");
                };
                if rest.is_empty() {
                    "/".to_string()
                } else if rest.starts_with('/') {
                    rest.to_string()
                } else {
                    return message(StatusCode::FORBIDDEN, "Forbidden");
                }
            }
        };
        let query = req.uri().query().map(str::to_string);
        let route = route_of(req.method(), &path);
        if route == Route::None {
            return no_route(&self.config.api);
        }
        let (parts, body) = req.into_parts();
        let body = match self.read_body(&parts.headers, body).await {
            Ok(body) => body,
            Err(response) => return response,
        };
        match route {
            Route::Settle => {
                self.function_url("settle-spend", &parts, &path, query.as_deref(), body)
                    .await
            }
            Route::Admin => {
                self.function_url("admin", &parts, &path, query.as_deref(), body)
                    .await
            }
            Route::Upstream => {
                self.proxy(&parts, &path, query.as_deref(), body, peer)
                    .await
            }
            Route::None => no_route(&self.config.api),
        }
    }

    /// The whole request body, at most `max_body_bytes` (API Gateway reads
    /// it before it calls the authorizer, and so does this).
    async fn read_body(
        &self,
        headers: &HeaderMap,
        body: Incoming,
    ) -> Result<Bytes, Response<Body>> {
        let max = self.config.max_body_bytes;
        let too_long = || message(StatusCode::PAYLOAD_TOO_LARGE, "Request Too Long");
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max as u64) {
            return Err(too_long());
        }
        match Limited::new(body, max).collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_long()),
            Err(_) => Err(message(
                StatusCode::BAD_REQUEST,
                "Could not read the request body",
            )),
        }
    }

    /// Settle and admin: cargo lambda's function URL emulation,
    /// `/lambda-url/<function>/<path>`, which the functions' routes accept.
    async fn function_url(
        &self,
        function: &str,
        parts: &http::request::Parts,
        path: &str,
        query: Option<&str>,
        body: Bytes,
    ) -> Response<Body> {
        let mut uri = format!("{}/lambda-url/{function}{path}", self.config.lambda_url);
        if let Some(q) = query {
            uri.push('?');
            uri.push_str(q);
        }
        let mut builder = Request::builder().method(parts.method.clone()).uri(&uri);
        for (name, value) in &parts.headers {
            if !is_hop_by_hop(name) {
                builder = builder.header(name, value);
            }
        }
        let Ok(request) = builder.body(Full::new(body)) else {
            return message(StatusCode::BAD_REQUEST, "Bad request");
        };
        match tokio::time::timeout(Duration::from_secs(30), self.client.request(request)).await {
            Ok(Ok(response)) => pass_through(response),
            Ok(Err(e)) => message(
                StatusCode::BAD_GATEWAY,
                &format!("local gateway: the {function} function is not reachable ({e})"),
            ),
            Err(_) => message(StatusCode::GATEWAY_TIMEOUT, "Endpoint request timed out"),
        }
    }

    async fn proxy(
        &self,
        parts: &http::request::Parts,
        path: &str,
        query: Option<&str>,
        body: Bytes,
        peer: SocketAddr,
    ) -> Response<Body> {
        let request_id = uuid_v4();
        let event = match &self.config.api {
            Api::Rest { stage } => rest_event(stage, parts, path, query, peer, &request_id),
            Api::Http => http_event(parts, path, query, peer, &request_id),
        };
        match self.authorize(&event).await {
            Decision::Allow(context) => {
                self.forward(parts, path, query, body, peer, &context).await
            }
            Decision::Deny(context) => self.denied(&context),
            Decision::Unauthorized => match self.config.api {
                Api::Rest { .. } => {
                    let mut r = Response::new(full(REST_UNAUTHORIZED_BODY));
                    *r.status_mut() = StatusCode::UNAUTHORIZED;
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                    r
                }
                Api::Http => message(StatusCode::UNAUTHORIZED, "Unauthorized"),
            },
            Decision::Failure(why) => {
                tracing::error!(%why, "authorizer failure");
                match self.config.api {
                    Api::Rest { .. } => json_answer(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        &json!({ "message": null }),
                    ),
                    Api::Http => {
                        message(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error")
                    }
                }
            }
        }
    }

    fn denied(&self, context: &Map<String, Value>) -> Response<Body> {
        match self.config.api {
            Api::Rest { .. } => {
                let body = render_gateway_template(REST_DENIAL_TEMPLATE, context);
                let mut response = Response::new(full(body));
                *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                response
            }
            Api::Http => message(StatusCode::FORBIDDEN, "Forbidden"),
        }
    }

    /// Invokes the authorize function with `event`, as API Gateway does.
    async fn authorize(&self, event: &Value) -> Decision {
        let uri = format!(
            "{}/2015-03-31/functions/authorize/invocations",
            self.config.lambda_url
        );
        let Ok(request) = Request::post(&uri)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(event.to_string())))
        else {
            return Decision::Failure("could not build the invocation".into());
        };
        let answer = tokio::time::timeout(self.config.authorizer_timeout, async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| e.to_string())?;
            let body = Limited::new(response.into_body(), 1024 * 1024)
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            serde_json::from_slice::<Value>(&body).map_err(|e| format!("not JSON: {e}"))
        })
        .await;
        match answer {
            Err(_) => Decision::Failure("the authorizer did not answer within its timeout".into()),
            Ok(Err(e)) => Decision::Failure(format!("invoking authorize: {e}")),
            Ok(Ok(answer)) => self.decision(&answer, event),
        }
    }

    fn decision(&self, answer: &Value, event: &Value) -> Decision {
        if let Some(error) = answer.get("errorMessage").and_then(Value::as_str) {
            return if error == "Unauthorized" {
                Decision::Unauthorized
            } else {
                Decision::Failure(format!("the authorizer failed: {error}"))
            };
        }
        let context = match answer.get("context") {
            Some(Value::Object(c)) => c.clone(),
            None | Some(Value::Null) => Map::new(),
            Some(_) => return Decision::Failure("context is not an object".into()),
        };
        match &self.config.api {
            Api::Http => match answer.get("isAuthorized") {
                Some(Value::Bool(true)) => Decision::Allow(context),
                Some(Value::Bool(false)) => Decision::Deny(context),
                _ => Decision::Failure(format!("no isAuthorized in {answer}")),
            },
            Api::Rest { .. } => {
                let arn = event["methodArn"].as_str().unwrap_or_default();
                let Some(statements) = answer
                    .pointer("/policyDocument/Statement")
                    .and_then(Value::as_array)
                else {
                    return Decision::Failure(format!("no policyDocument in {answer}"));
                };
                let covers = |s: &Value| match &s["Resource"] {
                    Value::String(r) => r == arn || r == "*",
                    Value::Array(rs) => rs.iter().any(|r| r == arn || r == "*"),
                    _ => false,
                };
                let effect = |e: &str| statements.iter().any(|s| s["Effect"] == e && covers(s));
                if effect("Allow") && !effect("Deny") {
                    Decision::Allow(context)
                } else {
                    Decision::Deny(context)
                }
            }
        }
    }

    /// The allowed request to the upstream, with the template's header
    /// mappings; the answer streams back as it comes.
    async fn forward(
        &self,
        parts: &http::request::Parts,
        path: &str,
        query: Option<&str>,
        body: Bytes,
        peer: SocketAddr,
        context: &Map<String, Value>,
    ) -> Response<Body> {
        let mut uri = format!("{}{path}", self.config.upstream_url);
        if let Some(q) = query {
            uri.push('?');
            uri.push_str(q);
        }
        let mut builder = Request::builder().method(parts.method.clone()).uri(&uri);
        for (name, value) in &parts.headers {
            if !is_hop_by_hop(name) && !is_gateway_owned(name) {
                builder = builder.header(name, value);
            }
        }
        let text = |k: &str| match context.get(k) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => String::new(),
        };
        let mut owned: Vec<(&str, String)> = vec![
            ("x-budget-reservation-id", text("reservation_id")),
            // What was charged: the client's own x-budget-* never passes.
            ("x-budget-customer-id", text("customer_id")),
            ("x-budget-model", text("model")),
            ("x-budget-tags", text("tags")),
            ("x-edge-budget-gateway", self.config.gateway_secret.clone()),
        ];
        if let Api::Rest { .. } = self.config.api {
            // REST mappings cannot remove a header: the template sets these
            // two from the authorizer instead.
            owned.push(("x-budget-reserve", text("reserved")));
            owned.push(("x-edge-budget-gateway-revision", "local".to_string()));
            owned.push(("x-api-key", text("key_hash")));
        }
        for (name, value) in owned {
            match HeaderValue::from_str(&value) {
                Ok(v) => builder = builder.header(name, v),
                Err(_) => {
                    return message(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error")
                }
            }
        }
        builder = builder.header("x-forwarded-for", peer.ip().to_string());
        let Ok(request) = builder.body(Full::new(body)) else {
            return message(StatusCode::BAD_REQUEST, "Bad request");
        };
        match tokio::time::timeout(self.config.upstream_timeout, self.client.request(request)).await
        {
            Ok(Ok(response)) => pass_through(response),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, upstream = %self.config.upstream_url, "upstream unreachable");
                message(
                    StatusCode::BAD_GATEWAY,
                    &format!(
                        "local gateway: the upstream {} is not reachable",
                        self.config.upstream_url
                    ),
                )
            }
            Err(_) => message(StatusCode::GATEWAY_TIMEOUT, "Endpoint request timed out"),
        }
    }
}

/// The upstream's answer, status and headers as sent (less those of the
/// connection), its body frame by frame: an SSE stream is not buffered.
fn pass_through(response: Response<Incoming>) -> Response<Body> {
    let (mut parts, body) = response.into_parts();
    let names: Vec<HeaderName> = parts.headers.keys().cloned().collect();
    for name in names {
        if is_hop_by_hop(&name) && name != header::CONTENT_LENGTH {
            parts.headers.remove(&name);
        }
    }
    Response::from_parts(parts, body.map_err(BoxError::from).boxed())
}

// --------------------------------------------------------------- events

const ACCOUNT: &str = "000000000000";
const API_ID: &str = "localgw";

fn region() -> String {
    std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".to_string())
}

fn header_text(v: &HeaderValue) -> String {
    String::from_utf8_lossy(v.as_bytes()).into_owned()
}

/// `%XX` and (in queries) `+` decoded; invalid escapes kept as they are.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// (name, value) pairs of a query string, decoded.
fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// A REST API `REQUEST` authorizer event, as API Gateway sends it for the
/// `/{proxy+}` resource (single-value maps hold the last value).
fn rest_event(
    stage: &str,
    parts: &http::request::Parts,
    path: &str,
    query: Option<&str>,
    peer: SocketAddr,
    request_id: &str,
) -> Value {
    let mut headers = Map::new();
    let mut multi = Map::new();
    for (name, value) in &parts.headers {
        let v = header_text(value);
        headers.insert(name.to_string(), json!(v));
        multi
            .entry(name.to_string())
            .or_insert_with(|| json!([]))
            .as_array_mut()
            .into_iter()
            .for_each(|a| a.push(json!(v)));
    }
    let mut qs = Map::new();
    let mut multi_qs = Map::new();
    for (k, v) in query_pairs(query) {
        qs.insert(k.clone(), json!(v));
        multi_qs
            .entry(k)
            .or_insert_with(|| json!([]))
            .as_array_mut()
            .into_iter()
            .for_each(|a| a.push(json!(v)));
    }
    let method = parts.method.as_str();
    let proxy = path.trim_start_matches('/');
    let user_agent = parts
        .headers
        .get(header::USER_AGENT)
        .map(header_text)
        .unwrap_or_default();
    json!({
        "type": "REQUEST",
        "methodArn": format!("arn:aws:execute-api:{}:{ACCOUNT}:{API_ID}/{stage}/{method}/{proxy}", region()),
        "resource": "/{proxy+}",
        "path": path,
        "httpMethod": method,
        "headers": headers,
        "multiValueHeaders": multi,
        "queryStringParameters": qs,
        "multiValueQueryStringParameters": multi_qs,
        "pathParameters": { "proxy": proxy },
        "stageVariables": {},
        "requestContext": {
            "path": format!("/{stage}{path}"),
            "accountId": ACCOUNT,
            "resourceId": "proxy0",
            "stage": stage,
            "requestId": request_id,
            "identity": { "sourceIp": peer.ip().to_string(), "userAgent": user_agent },
            "resourcePath": "/{proxy+}",
            "httpMethod": method,
            "apiId": API_ID,
        }
    })
}

/// An HTTP API payload 2.0 `REQUEST` authorizer event for `ANY /{proxy+}`
/// (repeated headers joined with commas, cookies apart).
fn http_event(
    parts: &http::request::Parts,
    path: &str,
    query: Option<&str>,
    peer: SocketAddr,
    request_id: &str,
) -> Value {
    let mut headers = Map::new();
    let mut cookies = Vec::new();
    for (name, value) in &parts.headers {
        let v = header_text(value);
        if name == header::COOKIE {
            cookies.extend(v.split(';').map(|c| json!(c.trim())));
            continue;
        }
        match headers.get_mut(name.as_str()) {
            Some(Value::String(existing)) => {
                existing.push(',');
                existing.push_str(&v);
            }
            _ => {
                headers.insert(name.to_string(), json!(v));
            }
        }
    }
    let mut qs = Map::new();
    for (k, v) in query_pairs(query) {
        match qs.get_mut(&k) {
            Some(Value::String(existing)) => {
                existing.push(',');
                existing.push_str(&v);
            }
            _ => {
                qs.insert(k, json!(v));
            }
        }
    }
    let method = parts.method.as_str();
    let proxy = path.trim_start_matches('/');
    let user_agent = parts
        .headers
        .get(header::USER_AGENT)
        .map(header_text)
        .unwrap_or_default();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default();
    json!({
        "version": "2.0",
        "type": "REQUEST",
        "routeArn": format!("arn:aws:execute-api:{}:{ACCOUNT}:{API_ID}/$default/{method}/{proxy}", region()),
        "identitySource": [],
        "routeKey": "ANY /{proxy+}",
        "rawPath": path,
        "rawQueryString": query.unwrap_or_default(),
        "cookies": cookies,
        "headers": headers,
        "queryStringParameters": qs,
        "requestContext": {
            "accountId": ACCOUNT,
            "apiId": API_ID,
            "domainName": "127.0.0.1",
            "domainPrefix": "127",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": peer.ip().to_string(),
                "userAgent": user_agent,
            },
            "requestId": request_id,
            "routeKey": "ANY /{proxy+}",
            "stage": "$default",
            "time": "",
            "timeEpoch": now,
        },
        "pathParameters": { "proxy": proxy },
        "stageVariables": {},
    })
}

pub fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// A fresh request id per request, as API Gateway gives (the authorizer
/// treats a repeated one as a retry of the same request).
fn uuid_v4() -> String {
    let h = random_hex(16);
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

/// A body fed through a channel, frame by frame (the mock's SSE).
pub struct ChannelBody(pub tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_as_deployed() {
        assert_eq!(route_of(&Method::POST, "/spend/settle"), Route::Settle);
        assert_eq!(route_of(&Method::POST, "/spend/release"), Route::Settle);
        assert_eq!(route_of(&Method::GET, "/spend/settle"), Route::None);
        assert_eq!(route_of(&Method::GET, "/user/info"), Route::Admin);
        assert_eq!(route_of(&Method::POST, "/key/generate"), Route::Admin);
        assert_eq!(route_of(&Method::GET, "/key/"), Route::Upstream);
        assert_eq!(
            route_of(&Method::POST, "/v1/chat/completions"),
            Route::Upstream
        );
        assert_eq!(
            route_of(&Method::POST, "/spend/settlement"),
            Route::Upstream
        );
        assert_eq!(route_of(&Method::GET, "/"), Route::None);
    }

    #[test]
    fn queries_decode_and_never_panic() {
        assert_eq!(
            query_pairs(Some("a=1&b=x%20y&c&d=%zz&e=%4")),
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "x y".into()),
                ("c".into(), "".into()),
                ("d".into(), "%zz".into()),
                ("e".into(), "%4".into()),
            ]
        );
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("%e2%82%ac+"), "€ ");
    }

    #[test]
    fn templates_substitute_without_escaping() {
        let mut c = Map::new();
        c.insert("message".into(), json!("over"));
        c.insert("spend".into(), json!(1.5));
        let body = render_gateway_template(REST_DENIAL_TEMPLATE, &c);
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["message"], "over");
        assert_eq!(v["error"]["spend"], "1.5");
        assert_eq!(v["error"]["reset_at"], "");
    }

    #[test]
    fn request_ids_are_fresh_uuids() {
        let a = uuid_v4();
        assert_eq!(a.len(), 36);
        assert_ne!(a, uuid_v4());
    }
}
