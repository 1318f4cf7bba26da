//! `make bench`: latency against the local DynamoDB emulator, side by
//! side with the floor, then the cold start of the release `authorize`
//! binary, and one table with every figure (the CPU rows are the medians
//! `benches/cpu.rs` measured just before; see scripts/bench.sh).
//!
//! - floor: the very `TransactWriteItems` a warm authorize sends (captured
//!   from one), issued directly with the SDK, with a fresh reservation id;
//! - authorize, warm: `authorize::handle` on an HTTP API authorizer event,
//!   the key's chain in the authorizer's memory;
//! - settle: `settle_spend::handle` on `POST /spend/settle`;
//! - authorize, cold: a fresh `Authorizer` (nothing in memory) each time.
//!
//! The four run interleaved (the order rotates through every permutation)
//! on one client, so the emulator's drift is shared. Items written by the
//! bench are deleted between measurements (untimed): moto copies the whole
//! table on every transaction, so a growing table would slow every row.
//!
//! Under `cargo test` (no `--bench` argument) it runs a few iterations as
//! a smoke test and skips the cold start. Nothing here asserts a timing.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::config::interceptors::{
    BeforeSerializationInterceptorContextRef, BeforeTransmitInterceptorContextRef,
};
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_dynamodb::error::BoxError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsInput;
use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem};
use aws_sdk_dynamodb::Client;
use budget_core::model::EntityRef;
use budget_core::service::Authorizer;
use budget_core::store::dynamo::{reservation_pk, DynamoStore};
use budget_core::store::table::PARTITION_KEY;
use chrono::Utc;
use edge_budget::{hex_id, http_api_event, http_request, response_json, TestTable};
use serde_json::{json, Value};

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    if std::env::var_os("AWS_ENDPOINT_URL_DYNAMODB").is_none() {
        eprintln!(
            "latency bench: AWS_ENDPOINT_URL_DYNAMODB is not set; run `make bench` \
             (scripts/bench.sh starts the DynamoDB emulator)"
        );
        if bench {
            std::process::exit(1);
        }
        return;
    }
    let (n, warmup, starts) = if bench {
        (
            env_usize("BENCH_N", 2000),
            100,
            env_usize("BENCH_STARTS", 20),
        )
    } else {
        (3, 1, 0)
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (mut rows, setup) = rt.block_on(latency(n, warmup));
    if !bench {
        println!("latency bench (smoke run under cargo test): ok");
        return;
    }
    rows.extend(cpu_rows());
    if starts > 0 {
        rows.extend(rt.block_on(cold_start(starts, &setup)));
    }
    let table = render(&rows, n, starts);
    println!("\n{table}");
    let out = target_dir().join("bench-results.md");
    match std::fs::write(&out, &table) {
        Ok(()) => println!("(also written to {})", out.display()),
        Err(e) => eprintln!("could not write {}: {e}", out.display()),
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

// ------------------------------------------------------------------ table

/// One line of the table: durations in microseconds, sizes in MiB.
struct Row {
    what: String,
    requests: String,
    p50: f64,
    p99: Option<f64>,
    /// `p50 ÷ floor` for the latency rows.
    ratio: Option<f64>,
    /// The goal, and whether it is met.
    goal: Option<(String, bool)>,
    unit: Unit,
}

#[derive(Clone, Copy)]
enum Unit {
    Time,
    Mebibytes,
}

fn fmt_value(v: f64, unit: Unit) -> String {
    match unit {
        Unit::Mebibytes => format!("{v:.1} MiB"),
        Unit::Time if v >= 1000.0 => format!("{:.2} ms", v / 1000.0),
        Unit::Time if v >= 10.0 => format!("{v:.1} µs"),
        Unit::Time => format!("{v:.2} µs"),
    }
}

fn render(rows: &[Row], n: usize, starts: usize) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "edge-budget `make bench` — {}; {}\n\
         latency: {n} of each, interleaved, against one local moto emulator (single-threaded); \
         cold start: median and max of {starts} starts\n\n",
        Utc::now().format("%Y-%m-%d %H:%M UTC"),
        machine()
    ));
    out.push_str(
        "| measure | DynamoDB requests | p50 / median | p99 / max | p50 ÷ floor | goal |\n",
    );
    out.push_str("|---|---:|---:|---:|---:|---|\n");
    for r in rows {
        let goal = match &r.goal {
            Some((g, true)) => format!("{g}: met"),
            Some((g, false)) => format!("{g}: **not met**"),
            None => String::new(),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            r.what,
            r.requests,
            fmt_value(r.p50, r.unit),
            r.p99.map(|v| fmt_value(v, r.unit)).unwrap_or("—".into()),
            r.ratio.map(|v| format!("{v:.3}")).unwrap_or_default(),
            goal
        ));
    }
    out
}

/// `2 CPUs (Intel Xeon …), 23.4 GiB RAM`
fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU".to_string(), |(_, m)| m.trim().to_string());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let ram_kb = proc_kb(&meminfo, "MemTotal:").unwrap_or(0);
    format!(
        "{cpus} CPUs ({model}), {:.1} GiB RAM",
        ram_kb as f64 / 1024.0 / 1024.0
    )
}

/// `VmHWM:   12345 kB` → 12345
fn proc_kb(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1e6
}

// ------------------------------------------------------------ interceptors

/// Counts the requests a client sends (retries included).
#[derive(Debug, Clone, Default)]
struct Counter(Arc<AtomicUsize>);

impl Counter {
    fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

impl Intercept for Counter {
    fn name(&self) -> &'static str {
        "Counter"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Keeps the last `TransactWriteItems` input the client was asked to send.
#[derive(Debug, Clone, Default)]
struct Capture(Arc<Mutex<Option<TransactWriteItemsInput>>>);

impl Intercept for Capture {
    fn name(&self) -> &'static str {
        "Capture"
    }

    fn read_before_execution(
        &self,
        context: &BeforeSerializationInterceptorContextRef<'_>,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(input) = context.input().downcast_ref::<TransactWriteItemsInput>() {
            if let Ok(mut slot) = self.0.lock() {
                *slot = Some(input.clone());
            }
        }
        Ok(())
    }
}

fn client_with(base: &Client, interceptor: impl Intercept + 'static) -> Client {
    Client::from_conf(base.config().to_builder().interceptor(interceptor).build())
}

// ---------------------------------------------------------------- latency

#[derive(Clone, Copy)]
enum Op {
    Floor,
    Warm,
    Settle,
    Cold,
}

/// Every order of the four, so none is always first after the emulator's
/// idle moment or always last.
fn orders() -> Vec<[Op; 4]> {
    let ops = [Op::Floor, Op::Warm, Op::Settle, Op::Cold];
    let mut out = Vec::new();
    for a in 0..4 {
        for b in 0..4 {
            for c in 0..4 {
                for d in 0..4 {
                    let idx = [a, b, c, d];
                    let mut seen = [false; 4];
                    idx.iter().for_each(|&i| seen[i] = true);
                    if seen.iter().all(|&s| s) {
                        out.push(idx.map(|i| ops[i]));
                    }
                }
            }
        }
    }
    out
}

/// The floor's request: the captured transaction with a reservation of
/// its own (the Put's key and id replaced).
fn floor_items(template: &TransactWriteItemsInput, id: &str) -> Vec<TransactWriteItem> {
    let mut items = template.transact_items().to_vec();
    if let Some(last) = items.last_mut() {
        if let Some(put) = last.put() {
            let mut item = put.item().clone();
            item.insert(PARTITION_KEY.into(), AttributeValue::S(reservation_pk(id)));
            item.insert("id".into(), AttributeValue::S(id.into()));
            let put = Put::builder()
                .table_name(put.table_name())
                .set_item(Some(item))
                .set_condition_expression(put.condition_expression().map(str::to_string))
                .set_expression_attribute_names(put.expression_attribute_names().cloned())
                .set_expression_attribute_values(put.expression_attribute_values().cloned())
                .build()
                .expect("floor put");
            *last = TransactWriteItem::builder().put(put).build();
        }
    }
    items
}

async fn delete_reservation(client: &Client, table: &str, id: &str) {
    // Ids handed out carry a receipt: the item's key is the bare id.
    let id = budget_core::receipt::base_id(id);
    let _ = client
        .delete_item()
        .table_name(table)
        .key(PARTITION_KEY, AttributeValue::S(reservation_pk(id)))
        .send()
        .await;
}

fn allowed_id(answer: &Value) -> Option<String> {
    if answer["isAuthorized"] != json!(true) {
        return None;
    }
    answer["context"]["reservation_id"]
        .as_str()
        .map(str::to_string)
}

/// Set up by `latency`, reused by the cold start (its table and key).
struct Setup {
    table: TestTable,
    key: String,
}

async fn latency(n: usize, warmup: usize) -> (Vec<Row>, Setup) {
    let t = TestTable::new().await;
    let now = Utc::now();
    // Far from full for the whole run: nothing here is ever denied.
    let windows = [("1d", 1.0e6), ("7d", 5.0e6), ("30d", 1.0e7)];
    t.create(EntityRef::user("user-bench"), &windows, None, None, now)
        .await;
    t.create(EntityRef::team("team-bench"), &windows, None, None, now)
        .await;
    let key = t
        .key(&windows, Some("user-bench"), Some("team-bench"), now)
        .await;
    let table = t.store.table().to_string();

    // The transaction a warm authorize sends, as the SDK was handed it.
    let capture = Capture::default();
    let capturing = Authorizer::new(
        DynamoStore::new(client_with(&t.client, capture.clone()), &table),
        t.settings.clone(),
    );
    for _ in 0..2 {
        let answer = authorize::handle(
            &capturing,
            http_api_event(&key, Some("0.05"), &hex_id()),
            Utc::now(),
        )
        .await
        .expect("answer");
        let id = allowed_id(&answer).unwrap_or_else(|| panic!("not allowed: {answer}"));
        delete_reservation(&t.client, &table, &id).await;
    }
    let template = capture
        .0
        .lock()
        .expect("capture")
        .clone()
        .expect("a captured TransactWriteItems");

    // One client for all four rows, counting requests.
    let counter = Counter::default();
    let client = client_with(&t.client, counter.clone());
    let store = DynamoStore::new(client.clone(), &table);
    let warm = Authorizer::new(store.clone(), t.settings.clone());
    let mut to_settle: VecDeque<String> = VecDeque::new();
    let mut samples: [Vec<Duration>; 4] = Default::default();
    let mut requests = [0usize; 4];
    let mut failures = [0usize; 4];
    let orders = orders();
    let started = Instant::now();
    for i in 0..warmup + n {
        let measured = i >= warmup;
        if measured && i > warmup && (i - warmup).is_multiple_of((n / 10).max(1)) {
            eprintln!(
                "latency bench: {} of {n} ({:.0} s)",
                i - warmup,
                started.elapsed().as_secs_f64()
            );
        }
        if to_settle.is_empty() {
            let answer = authorize::handle(
                &warm,
                http_api_event(&key, Some("0.05"), &hex_id()),
                Utc::now(),
            )
            .await
            .expect("answer");
            to_settle.extend(allowed_id(&answer));
        }
        for op in orders[i % orders.len()] {
            let before = counter.get();
            let (slot, elapsed, ok) = match op {
                Op::Floor => {
                    let id = format!("floor-{}", hex_id());
                    let items = floor_items(&template, &id);
                    let start = Instant::now();
                    let result = client
                        .transact_write_items()
                        .set_transact_items(Some(items))
                        .send()
                        .await;
                    let elapsed = start.elapsed();
                    delete_reservation(&t.client, &table, &id).await;
                    (0, elapsed, result.is_ok())
                }
                Op::Warm => {
                    let event = http_api_event(&key, Some("0.05"), &hex_id());
                    let start = Instant::now();
                    let answer = authorize::handle(&warm, event, Utc::now()).await;
                    let elapsed = start.elapsed();
                    let id = answer.ok().as_ref().and_then(allowed_id);
                    let ok = id.is_some();
                    to_settle.extend(id);
                    (1, elapsed, ok)
                }
                Op::Settle => {
                    let id = to_settle.pop_front().expect("a reservation to settle");
                    let body = json!({"reservation_id": id, "cost": 0.01}).to_string();
                    let request = http_request("POST", "/spend/settle", &body, &[]);
                    let start = Instant::now();
                    let response =
                        settle_spend::handle(&store, &t.settings, request, Utc::now()).await;
                    let elapsed = start.elapsed();
                    let (status, _) = response_json(response);
                    delete_reservation(&t.client, &table, &id).await;
                    (2, elapsed, status == 200)
                }
                Op::Cold => {
                    let fresh = Authorizer::new(store.clone(), t.settings.clone());
                    let event = http_api_event(&key, Some("0.05"), &hex_id());
                    let start = Instant::now();
                    let answer = authorize::handle(&fresh, event, Utc::now()).await;
                    let elapsed = start.elapsed();
                    let id = answer.ok().as_ref().and_then(allowed_id);
                    if let Some(id) = &id {
                        delete_reservation(&t.client, &table, id).await;
                    }
                    (3, elapsed, id.is_some())
                }
            };
            if measured {
                samples[slot].push(elapsed);
                requests[slot] += counter.get() - before;
                if !ok {
                    failures[slot] += 1;
                }
            }
        }
    }
    let names = [
        "floor: the same TransactWriteItems, SDK only",
        "authorize, warm (`authorize::handle`)",
        "settle (`settle_spend::handle`)",
        "authorize, cold (fresh instance)",
    ];
    for (name, f) in names.iter().zip(failures) {
        if f > 0 {
            eprintln!("latency bench: {name}: {f} of {n} did not succeed");
        }
    }
    let stats: Vec<(f64, f64)> = samples
        .iter_mut()
        .map(|s| {
            s.sort();
            (percentile(s, 0.50), percentile(s, 0.99))
        })
        .collect();
    let floor_p50 = stats[0].0;
    let rows = (0..4)
        .map(|i| {
            let ratio = stats[i].0 / floor_p50;
            Row {
                what: names[i].to_string(),
                requests: format!("{:.2}", requests[i] as f64 / n.max(1) as f64),
                p50: stats[i].0,
                p99: Some(stats[i].1),
                ratio: Some(ratio),
                goal: (i == 1).then(|| ("≤ 1.10 × floor".to_string(), ratio <= 1.10)),
                unit: Unit::Time,
            }
        })
        .collect();
    (rows, Setup { table: t, key })
}

// -------------------------------------------------------------------- CPU

/// The medians `benches/cpu.rs` (criterion) left in its output folder.
fn cpu_rows() -> Vec<Row> {
    let home = std::env::var_os("CRITERION_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("criterion"));
    let median_us = |name: &str| -> Option<f64> {
        let path = home
            .join("authorize_cpu")
            .join(name)
            .join("new/estimates.json");
        let text = std::fs::read_to_string(path).ok()?;
        let v: Value = serde_json::from_str(&text).ok()?;
        v["median"]["point_estimate"].as_f64().map(|ns| ns / 1000.0)
    };
    let lines = [
        ("event_json", "CPU: event bytes → JSON value", None),
        ("admit_3x3", "CPU: `admit`, 3 entities × 3 windows", None),
        ("response_json", "CPU: response → bytes", None),
        (
            "handler_memory_store",
            "CPU: `authorize::handle`, warm, memory store (parse → decide → respond)",
            Some(20.0),
        ),
        (
            "bytes_to_bytes_memory_store",
            "CPU: event bytes → response bytes, memory store",
            None,
        ),
        (
            "bytes_to_bytes_with_sdk",
            "CPU: the same + the SDK's request (build, sign, parse; no network)",
            None,
        ),
    ];
    let mut rows = Vec::new();
    for (name, what, goal) in lines {
        match median_us(name) {
            Some(us) => rows.push(Row {
                what: what.to_string(),
                requests: "0".into(),
                p50: us,
                p99: None,
                ratio: None,
                goal: goal.map(|g: f64| (format!("< {g} µs"), us < g)),
                unit: Unit::Time,
            }),
            None => eprintln!(
                "no criterion result for authorize_cpu/{name} under {}: run `cargo bench --bench cpu` first",
                home.display()
            ),
        }
    }
    rows
}

// -------------------------------------------------------------- cold start

/// What the runtime API server saw.
enum Seen {
    Next(Instant),
    Response(Instant, String),
    Error(String),
}

/// A minimal Lambda runtime API on 127.0.0.1: `GET
/// /2018-06-01/runtime/invocation/next` hands out the one event it holds
/// (later polls wait forever), `POST …/response` and `…/error` are
/// recorded.
struct RuntimeApi {
    address: String,
    event: Arc<Mutex<Option<String>>>,
    seen: Receiver<Seen>,
}

impl RuntimeApi {
    fn start() -> RuntimeApi {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind runtime API");
        let address = listener.local_addr().expect("address").to_string();
        let event: Arc<Mutex<Option<String>>> = Arc::default();
        let (tx, seen) = channel();
        let shared = event.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (event, tx) = (shared.clone(), tx.clone());
                std::thread::spawn(move || serve(stream, event, tx));
            }
        });
        RuntimeApi {
            address,
            event,
            seen,
        }
    }

    fn wait(&self, timeout: Duration) -> Option<Seen> {
        self.seen.recv_timeout(timeout).ok()
    }
}

fn serve(stream: TcpStream, event: Arc<Mutex<Option<String>>>, seen: Sender<Seen>) {
    let _ = stream.set_nodelay(true);
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let at = Instant::now();
        let body = String::from_utf8_lossy(&body).to_string();
        let path = request_line.split_whitespace().nth(1).unwrap_or("");
        let reply = if path.ends_with("/runtime/invocation/next") {
            let _ = seen.send(Seen::Next(at));
            match event.lock().ok().and_then(|mut e| e.take()) {
                Some(payload) => {
                    let deadline = Utc::now().timestamp_millis() + 30_000;
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                         lambda-runtime-aws-request-id: bench-{}\r\n\
                         lambda-runtime-deadline-ms: {deadline}\r\n\
                         lambda-runtime-invoked-function-arn: arn:aws:lambda:us-east-1:123456789012:function:authorize\r\n\
                         content-length: {}\r\n\r\n{payload}",
                        hex_id(),
                        payload.len()
                    )
                }
                // Later polls wait, as the real API does between events.
                None => {
                    let mut rest = Vec::new();
                    let _ = reader.read_to_end(&mut rest);
                    return;
                }
            }
        } else {
            let _ = seen.send(if path.ends_with("/response") {
                Seen::Response(at, body)
            } else {
                Seen::Error(format!("{path}: {body}"))
            });
            "HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\ncontent-length: 16\r\n\r\n{\"status\":\"OK\"}"
                .to_string()
        };
        if writer.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

fn vm_hwm_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    proc_kb(&status, "VmHWM:")
}

async fn cold_start(starts: usize, setup: &Setup) -> Vec<Row> {
    let binary = std::env::var_os("AUTHORIZE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("release/authorize"));
    let Ok(meta) = std::fs::metadata(&binary) else {
        eprintln!(
            "cold start skipped: no {} (cargo build --release -p authorize)",
            binary.display()
        );
        return Vec::new();
    };
    let (table, key) = (setup.table.store.table(), &setup.key);
    let api = RuntimeApi::start();
    let log_path = target_dir().join("bench-authorize.log");
    let mut to_first_poll = Vec::new();
    let mut first_invoke = Vec::new();
    let mut peak_kb = Vec::new();
    for _ in 0..starts {
        while api.wait(Duration::ZERO).is_some() {}
        let event = http_api_event(key, Some("0.05"), &hex_id()).to_string();
        *api.event.lock().expect("event") = Some(event);
        // Its logs (stdout and stderr), shown if a start fails.
        let (stdout, stderr) = match std::fs::File::create(&log_path) {
            Ok(f) => match f.try_clone() {
                Ok(g) => (Stdio::from(f), Stdio::from(g)),
                Err(_) => (Stdio::null(), Stdio::null()),
            },
            Err(_) => (Stdio::null(), Stdio::null()),
        };
        let mut command = Command::new(&binary);
        command
            .env_clear()
            .env("TABLE_NAME", table)
            .env("AWS_LAMBDA_RUNTIME_API", &api.address)
            .env("AWS_LAMBDA_FUNCTION_NAME", "authorize")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/authorize")
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "bench")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        for var in [
            "AWS_ENDPOINT_URL_DYNAMODB",
            "AWS_REGION",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
        ] {
            if let Some(v) = std::env::var_os(var) {
                command.env(var, v);
            }
        }
        let spawned = Instant::now();
        let mut child = match command.spawn() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("cold start: cannot run {}: {e}", binary.display());
                return Vec::new();
            }
        };
        let pid = child.id();
        let mut outcome = Err("no poll of the runtime API within 30 s".to_string());
        if let Some(Seen::Next(polled)) = api.wait(Duration::from_secs(30)) {
            to_first_poll.push(polled - spawned);
            outcome = match api.wait(Duration::from_secs(30)) {
                Some(Seen::Response(answered, body)) => {
                    first_invoke.push(answered - polled);
                    match serde_json::from_str::<Value>(&body) {
                        Ok(v) if v["isAuthorized"] == json!(true) => Ok(()),
                        _ => Err(format!("not allowed: {body}")),
                    }
                }
                Some(Seen::Error(e)) => Err(e),
                _ => Err("no answer within 30 s".into()),
            };
            // Its next poll: the first invocation is behind it.
            if let Some(Seen::Next(_)) = api.wait(Duration::from_secs(30)) {
                peak_kb.extend(vm_hwm_kb(pid));
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        if let Err(e) = outcome {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            eprintln!("cold start: {e}\n{log}");
            return Vec::new();
        }
    }
    let median_max = |v: &mut Vec<Duration>| {
        v.sort();
        (
            percentile(v, 0.5),
            v.last().map_or(f64::NAN, |d| d.as_secs_f64() * 1e6),
        )
    };
    let (start_p50, start_max) = median_max(&mut to_first_poll);
    let (invoke_p50, invoke_max) = median_max(&mut first_invoke);
    peak_kb.sort();
    let peak_max = peak_kb.last().copied().unwrap_or(0) as f64 / 1024.0;
    let peak_p50 = peak_kb.get(peak_kb.len() / 2).copied().unwrap_or(0) as f64 / 1024.0;
    let size_mib = meta.len() as f64 / 1024.0 / 1024.0;
    vec![
        Row {
            what: "cold start: exec → first poll of the runtime API (release `authorize`)".into(),
            requests: "0".into(),
            p50: start_p50,
            p99: Some(start_max),
            ratio: None,
            goal: Some(("< 25 ms".into(), start_p50 < 25_000.0)),
            unit: Unit::Time,
        },
        Row {
            what: "first invocation after a cold start (a cold authorize, new connection)".into(),
            requests: String::new(),
            p50: invoke_p50,
            p99: Some(invoke_max),
            ratio: None,
            goal: None,
            unit: Unit::Time,
        },
        Row {
            what: "peak memory (VmHWM) after the first invocation".into(),
            requests: String::new(),
            p50: peak_p50,
            p99: Some(peak_max),
            ratio: None,
            goal: Some(("< 32 MB".into(), peak_max * 1.048_576 < 32.0)),
            unit: Unit::Mebibytes,
        },
        Row {
            what: "binary size, stripped (release `authorize`)".into(),
            requests: String::new(),
            p50: size_mib,
            p99: None,
            ratio: None,
            goal: Some(("< 8 MB".into(), size_mib * 1.048_576 < 8.0)),
            unit: Unit::Mebibytes,
        },
    ]
}
