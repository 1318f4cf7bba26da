//! A fault-injecting HTTP proxy between the SDK and the DynamoDB emulator,
//! on loopback: passes requests through, or drops them, delays them, or
//! answers as a throttled DynamoDB would. For the reliability tests.
//!
//! It also answers the way DynamoDB does where the emulator is more
//! forgiving ([`FaultProxy::inject`]): a transaction cancelled with chosen
//! reasons per item, a `ValidationException`, a `TransactionConflictException`
//! for a plain write, a `TransactionInProgressException`, a batch read
//! that hands its keys back unprocessed — for the first N requests of an
//! operation, so a test can say "throttled twice, then admitted". The
//! bodies have DynamoDB's shapes (`__type`, `message` / `Message`,
//! `CancellationReasons: [{"Code", "Message"}]`), so the SDK parses them
//! as it parses DynamoDB's.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy does with the next requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward to the emulator.
    Pass,
    /// Close the connection without an answer (endpoint down).
    Drop,
    /// Wait this long, then forward (a slow store).
    Delay(Duration),
    /// Answer 400 `ThrottlingException`.
    Throttle,
    /// Answer 400 `ProvisionedThroughputExceededException`.
    ProvisionedThroughputExceeded,
    /// Forward this many more requests, then drop every one.
    FailAfter(usize),
}

/// A cancellation reason DynamoDB gives one item of a cancelled
/// transaction (`CancellationReasons[i].Code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The item passed (`"None"`).
    None,
    ConditionalCheckFailed,
    TransactionConflict,
    ThrottlingError,
    ProvisionedThroughputExceeded,
    /// E.g. the item would grow past 400 KB.
    ValidationError,
}

impl Reason {
    fn json(self) -> serde_json::Value {
        let (code, message) = match self {
            Reason::None => return serde_json::json!({"Code": "None"}),
            Reason::ConditionalCheckFailed => {
                ("ConditionalCheckFailed", "The conditional request failed")
            }
            Reason::TransactionConflict => (
                "TransactionConflict",
                "Transaction is ongoing for the item",
            ),
            Reason::ThrottlingError => (
                "ThrottlingError",
                "Throughput exceeds the current capacity of your table or index. DynamoDB is automatically scaling your table or index so please try again shortly.",
            ),
            Reason::ProvisionedThroughputExceeded => (
                "ProvisionedThroughputExceeded",
                "The level of configured provisioned throughput for the table was exceeded. Consider increasing your provisioning level with the UpdateTable API.",
            ),
            Reason::ValidationError => (
                "ValidationError",
                "Item size has exceeded the maximum allowed size",
            ),
        };
        serde_json::json!({"Code": code, "Message": message})
    }

    fn code(self) -> &'static str {
        match self {
            Reason::None => "None",
            Reason::ConditionalCheckFailed => "ConditionalCheckFailed",
            Reason::TransactionConflict => "TransactionConflict",
            Reason::ThrottlingError => "ThrottlingError",
            Reason::ProvisionedThroughputExceeded => "ProvisionedThroughputExceeded",
            Reason::ValidationError => "ValidationError",
        }
    }
}

/// How DynamoDB answers, instead of the emulator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// `TransactionCanceledException`: these reasons for the first items of
    /// the transaction, `None` for the rest.
    Cancelled(Vec<Reason>),
    /// `ValidationException` with this message (DynamoDB's reads and
    /// writes, e.g. "Size of hashkey has exceeded the maximum size limit of
    /// 2048 bytes").
    ValidationException(String),
    /// `TransactionConflictException`: a plain write met an item that a
    /// transaction holds.
    TransactionConflictException,
    /// `ConditionalCheckFailedException` for a plain write.
    ConditionalCheckFailedException,
    /// `TransactionInProgressException`: a transaction sent again (same
    /// client token) while the first is still running.
    TransactionInProgressException,
    /// BatchGetItem: 200, nothing read, every key handed back under
    /// `UnprocessedKeys` (as under throttling or past 16 MB).
    Unprocessed,
}

struct Injection {
    /// The operation, as in `X-Amz-Target: DynamoDB_20120810.<operation>`.
    operation: String,
    answer: Answer,
    left: usize,
}

pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

struct State {
    fault: Mutex<Fault>,
    upstream: String,
    requests: AtomicUsize,
    faulted: AtomicUsize,
    injections: Mutex<Vec<Injection>>,
    injected: AtomicUsize,
    by_operation: Mutex<std::collections::HashMap<String, usize>>,
}

impl FaultProxy {
    /// Starts a proxy in front of `upstream` (`http://127.0.0.1:PORT`).
    pub async fn start(upstream: &str) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let state = Arc::new(State {
            fault: Mutex::new(Fault::Pass),
            upstream,
            requests: AtomicUsize::new(0),
            faulted: AtomicUsize::new(0),
            injections: Mutex::new(Vec::new()),
            injected: AtomicUsize::new(0),
            by_operation: Mutex::new(std::collections::HashMap::new()),
        });
        let s = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    let _ = serve(conn, &s).await;
                });
            }
        });
        FaultProxy { addr, state, task }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set(&self, fault: Fault) {
        if let Ok(mut f) = self.state.fault.lock() {
            *f = fault;
        }
    }

    /// Answers the next `times` requests of `operation` (`TransactWriteItems`,
    /// `UpdateItem`, `GetItem`, `BatchGetItem`, …) with `answer` instead of
    /// the emulator's. Injections queue: the first one with answers left
    /// that matches a request answers it. Other requests pass as
    /// [`FaultProxy::set`] says.
    pub fn inject(&self, operation: &str, answer: Answer, times: usize) {
        if let Ok(mut list) = self.state.injections.lock() {
            list.push(Injection {
                operation: operation.to_ascii_lowercase(),
                answer,
                left: times,
            });
        }
    }

    /// How many requests an injection answered.
    pub fn injected(&self) -> usize {
        self.state.injected.load(Ordering::SeqCst)
    }

    /// Requests seen of `operation` (`GetItem`, `BatchGetItem`, …), whatever
    /// they were answered.
    pub fn seen(&self, operation: &str) -> usize {
        self.state
            .by_operation
            .lock()
            .ok()
            .and_then(|m| m.get(&operation.to_ascii_lowercase()).copied())
            .unwrap_or(0)
    }

    /// Requests seen, and how many of them got a fault.
    pub fn counts(&self) -> (usize, usize) {
        (
            self.state.requests.load(Ordering::SeqCst),
            self.state.faulted.load(Ordering::SeqCst),
        )
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one HTTP/1.1 request (headers and Content-Length body).
async fn read_request(conn: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + length {
                let n = conn.read(&mut chunk).await?;
                if n == 0 {
                    return Ok(None);
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Ok(Some(buf));
        }
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn dynamo_error(kind: &str) -> Vec<u8> {
    let body = format!(
        "{{\"__type\":\"com.amazonaws.dynamodb.v20120810#{kind}\",\"message\":\"injected by the fault proxy\"}}"
    );
    response(400, "Bad Request", &body)
}

fn response(status: u16, text: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} {text}\r\nContent-Type: application/x-amz-json-1.0\r\nx-amzn-RequestId: FAULTPROXY{:016X}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        rand::random::<u64>(),
        body.len()
    )
    .into_bytes()
}

/// The operation a request asks for (`X-Amz-Target`'s part after the dot,
/// lowercase) and its JSON body.
fn operation_of(request: &[u8]) -> (String, serde_json::Value) {
    let end = find(request, b"\r\n\r\n").unwrap_or(request.len());
    let head = String::from_utf8_lossy(&request[..end]).to_ascii_lowercase();
    let operation = head
        .lines()
        .find_map(|l| l.strip_prefix("x-amz-target:"))
        .and_then(|v| v.trim().rsplit('.').next().map(str::to_string))
        .unwrap_or_default();
    let body = request.get(end + 4..).unwrap_or_default();
    (
        operation,
        serde_json::from_slice(body).unwrap_or(serde_json::Value::Null),
    )
}

/// DynamoDB's answer `answer` to a request with body `body`.
fn injected_response(answer: &Answer, body: &serde_json::Value) -> Vec<u8> {
    use serde_json::json;
    let error = |body: serde_json::Value| response(400, "Bad Request", &body.to_string());
    match answer {
        Answer::Cancelled(reasons) => {
            let items = body["TransactItems"]
                .as_array()
                .map_or(reasons.len(), Vec::len)
                .max(reasons.len());
            let all: Vec<Reason> = (0..items)
                .map(|i| reasons.get(i).copied().unwrap_or(Reason::None))
                .collect();
            let codes: Vec<&str> = all.iter().map(|r| r.code()).collect();
            error(json!({
                "__type": "com.amazonaws.dynamodb.v20120810#TransactionCanceledException",
                "CancellationReasons": all.iter().map(|r| r.json()).collect::<Vec<_>>(),
                "Message": format!(
                    "Transaction cancelled, please refer cancellation reasons for specific reasons [{}]",
                    codes.join(", ")
                ),
            }))
        }
        Answer::ValidationException(message) => error(json!({
            "__type": "com.amazon.coral.validate#ValidationException",
            "message": message,
        })),
        Answer::TransactionConflictException => error(json!({
            "__type": "com.amazonaws.dynamodb.v20120810#TransactionConflictException",
            "message": "Transaction is ongoing for the item",
        })),
        Answer::ConditionalCheckFailedException => error(json!({
            "__type": "com.amazonaws.dynamodb.v20120810#ConditionalCheckFailedException",
            "message": "The conditional request failed",
        })),
        Answer::TransactionInProgressException => error(json!({
            "__type": "com.amazonaws.dynamodb.v20120810#TransactionInProgressException",
            "Message": "The transaction with the given request token is already in progress.",
        })),
        Answer::Unprocessed => {
            let tables = body["RequestItems"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            let responses: serde_json::Map<String, serde_json::Value> =
                tables.keys().map(|t| (t.clone(), json!([]))).collect();
            response(
                200,
                "OK",
                &json!({"Responses": responses, "UnprocessedKeys": tables}).to_string(),
            )
        }
    }
}

async fn serve(mut conn: TcpStream, state: &State) -> std::io::Result<()> {
    // One request per connection: the emulator answers HTTP/1.0 style.
    let Some(request) = read_request(&mut conn).await? else {
        return Ok(());
    };
    state.requests.fetch_add(1, Ordering::SeqCst);
    let (operation, body) = operation_of(&request);
    if let Ok(mut m) = state.by_operation.lock() {
        *m.entry(operation.clone()).or_default() += 1;
    }
    let injected = state.injections.lock().ok().and_then(|mut list| {
        let i = list
            .iter_mut()
            .find(|i| i.left > 0 && i.operation == operation)?;
        i.left -= 1;
        Some(i.answer.clone())
    });
    if let Some(answer) = injected {
        state.injected.fetch_add(1, Ordering::SeqCst);
        state.faulted.fetch_add(1, Ordering::SeqCst);
        conn.write_all(&injected_response(&answer, &body)).await?;
        conn.shutdown().await?;
        return Ok(());
    }
    let fault = {
        let mut f = state
            .fault
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?;
        let now = *f;
        if let Fault::FailAfter(n) = now {
            *f = if n == 0 {
                Fault::Drop
            } else {
                Fault::FailAfter(n - 1)
            };
            if n == 0 {
                Fault::Drop
            } else {
                Fault::Pass
            }
        } else {
            now
        }
    };
    match fault {
        Fault::Drop => {
            state.faulted.fetch_add(1, Ordering::SeqCst);
            return Ok(());
        }
        Fault::Throttle => {
            state.faulted.fetch_add(1, Ordering::SeqCst);
            conn.write_all(&dynamo_error("ThrottlingException")).await?;
            return Ok(());
        }
        Fault::ProvisionedThroughputExceeded => {
            state.faulted.fetch_add(1, Ordering::SeqCst);
            conn.write_all(&dynamo_error("ProvisionedThroughputExceededException"))
                .await?;
            return Ok(());
        }
        Fault::Delay(d) => {
            state.faulted.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(d).await;
        }
        Fault::Pass | Fault::FailAfter(_) => {}
    }
    let mut upstream = TcpStream::connect(&state.upstream).await?;
    upstream.write_all(&request).await?;
    let mut response = Vec::new();
    upstream.read_to_end(&mut response).await?;
    conn.write_all(&response).await?;
    conn.shutdown().await?;
    Ok(())
}
