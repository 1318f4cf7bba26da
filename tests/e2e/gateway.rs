//! The local gateway (`dev/local-gateway`, what `make local` serves) in
//! front of a test upstream, with the real authorize function behind a
//! stand-in for the Lambda invoke API: what reaches the upstream, that an
//! answer streams chunk by chunk, and what a denied client gets (the REST
//! API's 429 and 401 gateway responses, the HTTP API's 403), with the body
//! text `template.yaml` declares.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use local_gateway::{Api, Body, ChannelBody, Config, Gateway, REST_DENIAL_TEMPLATE};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use crate::helpers::TestApp;

/// Serves `handler` on a fresh port of 127.0.0.1; answers the address.
async fn serve_fn<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Response<Body>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// The Lambda invoke API of `cargo lambda watch`, for the authorize
/// function only: the event goes to `authorize::handle`, an error comes
/// back as the runtime reports it (`errorType`, `errorMessage`).
async fn lambda(app: Arc<TestApp>) -> SocketAddr {
    serve_fn(move |req: Request<Incoming>| {
        let app = app.clone();
        async move {
            assert_eq!(
                req.uri().path(),
                "/2015-03-31/functions/authorize/invocations"
            );
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let event: Value = serde_json::from_slice(&body).unwrap();
            let answer = match authorize::handle(&app.authorizer, event, app.now).await {
                Ok(v) => v,
                Err(e) => {
                    let d = lambda_runtime::Diagnostic::from(e);
                    json!({"errorType": d.error_type, "errorMessage": d.error_message})
                }
            };
            Response::new(local_gateway::full(answer.to_string()))
        }
    })
    .await
}

/// What the upstream saw of each request.
type Seen = Arc<Mutex<Vec<HeaderMap>>>;

/// An upstream that records headers; `/stream` sends one SSE event, waits
/// until the test has read it, then sends the last one.
async fn upstream(seen: Seen, release: Arc<Mutex<Option<oneshot::Receiver<()>>>>) -> SocketAddr {
    serve_fn(move |req: Request<Incoming>| {
        let seen = seen.clone();
        let release = release.clone();
        async move {
            seen.lock().unwrap().push(req.headers().clone());
            if req.uri().path() != "/v1/stream" {
                return Response::new(local_gateway::full(r#"{"ok": true}"#));
            }
            let (tx, rx) = mpsc::channel::<Bytes>(2);
            let wait = release.lock().unwrap().take();
            tokio::spawn(async move {
                tx.send(Bytes::from_static(b"data: one\n\n")).await.unwrap();
                if let Some(wait) = wait {
                    let _ = wait.await;
                }
                let _ = tx.send(Bytes::from_static(b"data: two\n\n")).await;
            });
            let mut r = Response::new(ChannelBody(rx).boxed());
            r.headers_mut()
                .insert("content-type", "text/event-stream".parse().unwrap());
            r
        }
    })
    .await
}

struct Setup {
    base: String,
    seen: Seen,
    release: Option<oneshot::Sender<()>>,
    secret: String,
}

async fn setup(app: Arc<TestApp>, api: Api) -> Setup {
    let seen: Seen = Arc::default();
    let (release_tx, release_rx) = oneshot::channel();
    let upstream = upstream(seen.clone(), Arc::new(Mutex::new(Some(release_rx)))).await;
    let lambda = lambda(app).await;
    let mut config = Config::new(
        api.clone(),
        &format!("http://{lambda}"),
        &format!("http://{upstream}"),
    );
    config.max_body_bytes = 64 * 1024;
    let secret = config.gateway_secret.clone();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(local_gateway::serve(listener, Gateway::new(config)));
    let base = match api {
        Api::Rest { stage } => format!("http://{addr}/{stage}"),
        Api::Http => format!("http://{addr}"),
    };
    Setup {
        base,
        seen,
        release: Some(release_tx),
        secret,
    }
}

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

fn client() -> Client {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

async fn send(
    c: &Client,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Response<Incoming> {
    let mut b = Request::post(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    c.request(b.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .expect("the gateway answers")
}

async fn text(r: Response<Incoming>) -> (StatusCode, String) {
    let status = r.status();
    let body = r.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn key_ref(key: &str) -> budget_core::model::EntityRef {
    budget_core::model::EntityRef::key(budget_core::keys::hash_key(key))
}

fn rest() -> Api {
    Api::Rest {
        stage: "api".into(),
    }
}

#[tokio::test]
async fn the_upstream_gets_the_authorizers_reservation_id_and_never_the_clients() {
    let app = Arc::new(TestApp::new().await);
    let key = app.key().window("1d", 10.0).create().await;
    let s = setup(app.clone(), rest()).await;
    let c = client();
    let bearer = format!("Bearer {key}");
    let r = send(
        &c,
        &format!("{}/v1/chat/completions?x=1", s.base),
        &[
            ("authorization", &bearer),
            ("x-budget-reserve", "0.25"),
            (
                "x-budget-reservation-id",
                "r-0123456789abcdef0123456789abcdef",
            ),
            ("x-budget-user", "someone-else"),
            ("x-edge-budget-gateway", "forged"),
            ("x-api-key", "sk-forged"),
            ("x-other", "kept"),
        ],
        b"{}".to_vec(),
    )
    .await;
    let (status, body) = text(r).await;
    assert_eq!(status, 200, "{body}");
    let seen = s.seen.lock().unwrap()[0].clone();
    let id = seen["x-budget-reservation-id"].to_str().unwrap();
    assert!(
        id.starts_with("r-") && id != "r-0123456789abcdef0123456789abcdef",
        "{id}"
    );
    assert_eq!(seen["x-edge-budget-gateway"], s.secret.as_str());
    assert_eq!(seen["x-budget-reserve"], "0.25", "the amount reserved");
    assert_ne!(seen["x-api-key"], "sk-forged");
    assert!(seen.get("x-budget-user").is_none(), "{seen:?}");
    assert_eq!(seen["x-other"], "kept");
    // The reservation is real: settling it records the spend.
    let (status, settled) = app.settle(id, 0.1).await;
    assert_eq!(status, 200, "{settled}");
    let day = app.window(&key_ref(&key), "1d").await;
    assert_eq!(day.spent, budget_core::Money::parse_decimal("0.1").unwrap());
}

/// The customer the upstream hears of is the one the authorizer charged:
/// a client's own `x-budget-customer-id` never passes (the LiteLLM
/// callback compares the body with it).
#[tokio::test]
async fn the_upstream_hears_the_charged_customer_never_the_clients_claim() {
    let app = Arc::new(TestApp::new().await);
    let key = app.key().window("1d", 10.0).create().await;
    app.post(
        "/customer/new",
        serde_json::json!({"user_id": "cust-gw", "max_budget": 5.0}),
    )
    .await;
    let s = setup(app.clone(), rest()).await;
    let c = client();
    let bearer = format!("Bearer {key}");
    for (sent, charged) in [(Some("cust-gw"), "cust-gw"), (None, "(none)")] {
        let mut headers = vec![
            ("authorization", bearer.as_str()),
            ("x-budget-customer-id", "someone-else"),
        ];
        headers.push(("x-budget-model", "forged-model"));
        headers.push(("x-budget-tags", "forged-tag"));
        if let Some(c) = sent {
            headers.push(("x-litellm-customer-id", c));
            headers.push(("x-litellm-model", "m-1"));
            headers.push(("x-litellm-tags", "b,a"));
        }
        let r = send(
            &c,
            &format!("{}/v1/chat/completions", s.base),
            &headers,
            b"{}".to_vec(),
        )
        .await;
        let (status, body) = text(r).await;
        assert_eq!(status, 200, "{body}");
        let seen = s.seen.lock().unwrap().last().unwrap().clone();
        assert_eq!(seen["x-budget-customer-id"], charged, "{seen:?}");
        let model = if sent.is_some() { "m-1" } else { "(none)" };
        assert_eq!(seen["x-budget-model"], model, "{seen:?}");
        let tags = if sent.is_some() { "a,b" } else { "(none)" };
        assert_eq!(seen["x-budget-tags"], tags, "{seen:?}");
    }
    let w = app
        .window(
            &budget_core::model::EntityRef::customer("cust-gw"),
            "lifetime",
        )
        .await;
    assert!(!w.reserved.is_zero(), "the customer named was charged");
}

#[tokio::test]
async fn a_streamed_answer_passes_chunk_by_chunk() {
    let app = Arc::new(TestApp::new().await);
    let key = app.key().window("1d", 10.0).create().await;
    let mut s = setup(app.clone(), rest()).await;
    let c = client();
    let bearer = format!("Bearer {key}");
    let r = send(
        &c,
        &format!("{}/v1/stream", s.base),
        &[("authorization", &bearer)],
        vec![],
    )
    .await;
    assert_eq!(r.status(), 200);
    let mut body = r.into_body();
    // The upstream sends "two" only once the client has "one": a gateway
    // that buffered would never deliver "one" (the deadline fails the test).
    let first = tokio::time::timeout(Duration::from_secs(20), body.frame())
        .await
        .expect("the first event arrives before the upstream has finished")
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap();
    assert_eq!(&first[..], b"data: one\n\n");
    s.release.take().unwrap().send(()).unwrap();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(&rest[..], b"data: two\n\n");
}

#[tokio::test]
async fn a_denied_client_gets_what_the_deployed_api_answers() {
    let app = Arc::new(TestApp::new().await);
    let key = app.key().window("1d", 1.0).create().await;
    // The local gateway's bodies are the template's, byte for byte.
    let t = crate::template::template();
    assert_eq!(
        crate::template::rest_denial_template(&t),
        REST_DENIAL_TEMPLATE
    );
    assert_eq!(
        crate::template::gateway_response_body(&t, "RestUnauthorizedResponse"),
        local_gateway::REST_UNAUTHORIZED_BODY
    );

    let s = setup(app.clone(), rest()).await;
    let c = client();
    let bearer = format!("Bearer {key}");
    let r = send(
        &c,
        &format!("{}/v1/chat/completions", s.base),
        &[("authorization", &bearer), ("x-budget-reserve", "1.5")],
        vec![],
    )
    .await;
    let (status, body) = text(r).await;
    assert_eq!(status, 429, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["type"], "budget_exceeded");
    assert_eq!(v["error"]["estimate"], "1.5");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("Budget exceeded: key=")
            && message
                .contains("over 1d budget. Spend=$0.0000, Estimate=$1.5000, Limit=$1.00, resets "),
        "{message}"
    );
    // An unknown key: the UNAUTHORIZED gateway response.
    let r = send(
        &c,
        &format!("{}/v1/chat/completions", s.base),
        &[("authorization", "Bearer sk-unknown")],
        vec![],
    )
    .await;
    let (status, body) = text(r).await;
    assert_eq!(
        (status.as_u16(), body.as_str()),
        (401, local_gateway::REST_UNAUTHORIZED_BODY)
    );
    // Outside the stage, or the root: what API Gateway says.
    let bare = s.base.trim_end_matches("/api");
    let (status, _) =
        text(send(&c, &format!("{bare}/v1/chat/completions"), &[], vec![]).await).await;
    assert_eq!(status, 403);
    // A body over the limit is refused before anything is reserved.
    let r = send(
        &c,
        &format!("{}/v1/chat/completions", s.base),
        &[("authorization", &bearer)],
        vec![b'x'; 64 * 1024 + 1],
    )
    .await;
    assert_eq!(text(r).await.0, 413);
    assert!(
        s.seen.lock().unwrap().is_empty(),
        "nothing reached the upstream"
    );
    let day = app.window(&key_ref(&key), "1d").await;
    assert_eq!(day.reserved, budget_core::Money::ZERO);

    // The HTTP API says 403 to every denial.
    let h = setup(app.clone(), Api::Http).await;
    let r = send(
        &c,
        &format!("{}/v1/chat/completions", h.base),
        &[("authorization", &bearer), ("x-budget-reserve", "1.5")],
        vec![],
    )
    .await;
    assert_eq!(
        text(r).await,
        (
            StatusCode::FORBIDDEN,
            r#"{"message":"Forbidden"}"#.to_string()
        )
    );
}
