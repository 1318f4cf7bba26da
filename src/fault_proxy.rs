//! A fault-injecting HTTP proxy between the SDK and the DynamoDB emulator,
//! on loopback: passes requests through, or drops them, delays them, or
//! answers as a throttled DynamoDB would. For the reliability tests.

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
    format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: application/x-amz-json-1.0\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

async fn serve(mut conn: TcpStream, state: &State) -> std::io::Result<()> {
    // One request per connection: the emulator answers HTTP/1.0 style.
    let Some(request) = read_request(&mut conn).await? else {
        return Ok(());
    };
    state.requests.fetch_add(1, Ordering::SeqCst);
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
