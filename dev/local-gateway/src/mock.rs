//! The upstream `make local` uses when `UPSTREAM_URL` is unset: an
//! OpenAI-style `POST …/chat/completions` that answers in a few words,
//! streamed as server-sent events when the request says `"stream": true`,
//! and settles a fixed cost against the reservation id the gateway sent, as
//! a real upstream's settle hook would (before its last chunk, so a client
//! that has read the whole answer sees the spend). `GET …/models` lists its
//! one model. It reports what it received of the gateway's headers in an
//! `edge_budget` field (the gateway secret only as present or absent).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::{full, Body, BoxError, ChannelBody};

const WORDS: [&str; 8] = [
    "Hello",
    " from",
    " edge-budget's",
    " mock",
    " upstream:",
    " your",
    " budget",
    " held.",
];

pub struct Mock {
    /// Where it settles: the gateway's `/spend/settle` route.
    pub settle_url: String,
    /// USD settled per answer (`MOCK_COST_USD`).
    pub cost_usd: String,
    /// Pause between two streamed chunks.
    pub chunk_delay: Duration,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Mock {
    pub fn new(settle_url: String, cost_usd: String, chunk_delay: Duration) -> Arc<Mock> {
        Arc::new(Mock {
            settle_url,
            cost_usd,
            chunk_delay,
            client: Client::builder(TokioExecutor::new()).build_http(),
        })
    }
}

pub async fn serve(listener: TcpListener, mock: Arc<Mock>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let mock = mock.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let mock = mock.clone();
                async move { Ok::<_, Infallible>(mock.answer(req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
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

/// What the mock saw of the headers the gateway owns.
fn received(headers: &HeaderMap) -> Value {
    let mut seen = serde_json::Map::new();
    for (name, value) in headers {
        let n = name.as_str();
        if n == "x-edge-budget-gateway" {
            seen.insert(n.into(), json!("(present)"));
        } else if n.starts_with("x-budget-") || n == "x-api-key" {
            seen.insert(n.into(), json!(String::from_utf8_lossy(value.as_bytes())));
        }
    }
    Value::Object(seen)
}

impl Mock {
    async fn answer(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        if req.method() == Method::GET && path.ends_with("/models") {
            return json_answer(
                StatusCode::OK,
                &json!({"object": "list", "data": [{"id": "mock-model", "object": "model", "owned_by": "edge-budget"}]}),
            );
        }
        if req.method() != Method::POST || !path.ends_with("/chat/completions") {
            return json_answer(
                StatusCode::NOT_FOUND,
                &json!({"error": {"message": format!("the mock upstream serves POST …/chat/completions and GET …/models, not {} {path}", req.method())}}),
            );
        }
        let (parts, body) = req.into_parts();
        let request: Value = match Limited::new(body, 1024 * 1024).collect().await {
            Ok(b) => serde_json::from_slice(&b.to_bytes()).unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        let model = request["model"]
            .as_str()
            .unwrap_or("mock-model")
            .to_string();
        let stream = request["stream"] == json!(true);
        let reservation = parts
            .headers
            .get("x-budget-reservation-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let seen = received(&parts.headers);
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let usage = json!({"prompt_tokens": 9, "completion_tokens": WORDS.len(), "total_tokens": 9 + WORDS.len()});
        if !stream {
            let settled = self.settle(reservation.as_deref()).await;
            return json_answer(
                StatusCode::OK,
                &json!({
                    "id": "chatcmpl-mock",
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": WORDS.concat()}}],
                    "usage": usage,
                    "edge_budget": {"received": seen, "settle": settled},
                }),
            );
        }
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        let delay = self.chunk_delay;
        let this = MockSettler {
            settle_url: self.settle_url.clone(),
            cost_usd: self.cost_usd.clone(),
            client: self.client.clone(),
        };
        tokio::spawn(async move {
            let chunk = |delta: Value, finish: Value, extra: Option<Value>| {
                let mut c = json!({
                    "id": "chatcmpl-mock", "object": "chat.completion.chunk",
                    "created": created, "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                });
                if let Some(extra) = extra {
                    c["edge_budget"] = extra;
                }
                Bytes::from(format!("data: {c}\n\n"))
            };
            for (i, word) in WORDS.iter().enumerate() {
                let delta = if i == 0 {
                    json!({"role": "assistant", "content": word})
                } else {
                    json!({"content": word})
                };
                if tx.send(chunk(delta, Value::Null, None)).await.is_err() {
                    return; // the client went away
                }
                tokio::time::sleep(delay).await;
            }
            let settled = this.settle(reservation.as_deref()).await;
            let last = chunk(
                json!({}),
                json!("stop"),
                Some(json!({"received": seen, "settle": settled})),
            );
            let _ = tx.send(last).await;
            let _ = tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
        });
        let mut response = Response::new(ChannelBody(rx).boxed());
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        response
    }

    async fn settle(&self, reservation: Option<&str>) -> Value {
        MockSettler {
            settle_url: self.settle_url.clone(),
            cost_usd: self.cost_usd.clone(),
            client: self.client.clone(),
        }
        .settle(reservation)
        .await
    }
}

struct MockSettler {
    settle_url: String,
    cost_usd: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl MockSettler {
    /// `POST /spend/settle {"reservation_id", "cost"}`; what it answered.
    async fn settle(&self, reservation: Option<&str>) -> Value {
        let Some(id) = reservation else {
            return json!({"error": "no x-budget-reservation-id: nothing settled"});
        };
        let cost: Value = serde_json::from_str(&self.cost_usd).unwrap_or(json!(0));
        let body = json!({"reservation_id": id, "cost": cost}).to_string();
        let Ok(request) = Request::post(&self.settle_url)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
        else {
            return json!({"error": "bad settle URL"});
        };
        let result: Result<(u16, Value), BoxError> = async {
            let response =
                tokio::time::timeout(Duration::from_secs(10), self.client.request(request))
                    .await??;
            let status = response.status().as_u16();
            let bytes = Limited::new(response.into_body(), 64 * 1024)
                .collect()
                .await?
                .to_bytes();
            Ok((
                status,
                serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            ))
        }
        .await;
        match result {
            Ok((status, answer)) => json!({"status": status, "cost": cost, "answer": answer}),
            Err(e) => json!({"error": format!("settle failed: {e}")}),
        }
    }
}
