//! The event pipeline measured end to end on PostgreSQL and NATS: append + publish
//! throughput, append-to-browser latency with many SSE clients, replay rate, submit rate,
//! and the resident memory of a separate `api` process under stalled and replaying clients.
//!
//! `cargo bench --bench pipeline [-- throughput|sse|replay|accept|memory ...]`. Each run works
//! in a fresh PostgreSQL schema and under a fresh NATS prefix, and removes both at the end.
//! Environment: BENCH_DATABASE_URL (or TEST_DATABASE_URL), BENCH_NATS_URL (or TEST_NATS_URL);
//! the scenario sizes can be changed with the BENCH_* variables read in `Sizes::from_env`.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail, ensure};
use eventsource_stream::Eventsource;
use futures::StreamExt;
use hdrhistogram::Histogram;
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use troupe_api::HttpConfig;
use troupe_api::auth::Tokens;
use troupe_events::event::{AgentOutput, SuccessStatus};
use troupe_events::{
    BackendConfig, Backends, Catalogue, Event, EventBody, ExecutionMode, NewTask, RawEvent, Store,
    Subjects, TaskSpec,
};
use uuid::Uuid;

const SCENARIOS: [&str; 5] = ["throughput", "sse", "replay", "accept", "memory"];
const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";
/// What a coalesced `agent_token` carries: a few words of streamed model output.
const TOKEN_TEXT: &str = "fn main() { println!(\"hello, troupe\"); } // streamed text, 64 B";

/// How big each scenario is; the defaults are the figures in BENCHMARKS.md.
struct Sizes {
    tasks: usize,
    events_per_task: usize,
    batch: usize,
    single_task_events: usize,
    sse_clients: usize,
    sse_rate: u64,
    sse_secs: u64,
    replay_events: usize,
    replay_batch: usize,
    accept_tasks: usize,
    accept_concurrency: usize,
    memory_events: usize,
    memory_stall_secs: u64,
    memory_clients: usize,
    memory_tasks: usize,
    memory_waves: usize,
}

impl Sizes {
    fn from_env() -> anyhow::Result<Self> {
        fn var(name: &str, default: usize) -> anyhow::Result<usize> {
            match std::env::var(name) {
                Ok(v) => v
                    .parse()
                    .with_context(|| format!("{name}={v:?} is not a whole number")),
                Err(_) => Ok(default),
            }
        }
        Ok(Sizes {
            tasks: var("BENCH_TASKS", 50)?,
            events_per_task: var("BENCH_EVENTS_PER_TASK", 4_000)?,
            batch: 256,
            single_task_events: var("BENCH_SINGLE_TASK_EVENTS", 20_000)?,
            sse_clients: var("BENCH_SSE_CLIENTS", 1_000)?,
            sse_rate: var("BENCH_SSE_RATE", 200)? as u64,
            sse_secs: var("BENCH_SSE_SECS", 10)? as u64,
            replay_events: var("BENCH_REPLAY_EVENTS", 100_000)?,
            replay_batch: 1_000,
            accept_tasks: var("BENCH_ACCEPT_TASKS", 2_000)?,
            accept_concurrency: var("BENCH_ACCEPT_CONCURRENCY", 32)?,
            memory_events: var("BENCH_MEMORY_EVENTS", 100_000)?,
            memory_stall_secs: var("BENCH_MEMORY_STALL_SECS", 20)? as u64,
            memory_clients: var("BENCH_MEMORY_CLIENTS", 500)?,
            memory_tasks: var("BENCH_MEMORY_TASKS", 20)?.max(1),
            memory_waves: var("BENCH_MEMORY_WAVES", 3)?,
        })
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    // On a worker thread, like the api's and a worker's tasks: a future left on the main
    // thread is woken across threads for every message, which costs more than the work.
    let outcome = match tokio::spawn(run()).await {
        Ok(outcome) => outcome,
        Err(e) => Err(anyhow!("the bench panicked: {e}")),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nbench FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    // `cargo bench` adds `--bench`; anything else that is not a flag names a scenario.
    let mut chosen: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    for name in &chosen {
        ensure!(
            SCENARIOS.contains(&name.as_str()),
            "unknown scenario {name:?}; scenarios: {}",
            SCENARIOS.join(", ")
        );
    }
    if chosen.is_empty() {
        chosen = SCENARIOS.iter().map(|s| s.to_string()).collect();
    }
    let sizes = Sizes::from_env()?;
    let database_url = env_or(
        &["BENCH_DATABASE_URL", "TEST_DATABASE_URL"],
        DEFAULT_DATABASE_URL,
    );
    let nats_url = env_or(&["BENCH_NATS_URL", "TEST_NATS_URL"], DEFAULT_NATS_URL);

    let env = Remote::create(&database_url, &nats_url).await?;
    println!(
        "troupe pipeline bench: PostgreSQL {database_url} (schema {}), NATS {nats_url} (prefix {})",
        env.schema, env.prefix
    );
    let outcome = tokio::select! {
        outcome = scenarios(&env, &sizes, &chosen) => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    let cleaned = env.remove().await;
    outcome?;
    cleaned
}

fn env_or(names: &[&str], default: &str) -> String {
    names
        .iter()
        .find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| default.to_string())
}

/// The run's own corner of PostgreSQL and NATS.
struct Remote {
    database_url: String,
    nats_url: String,
    schema: String,
    prefix: String,
    admin: sqlx::PgPool,
}

impl Remote {
    /// Fails when PostgreSQL or NATS cannot be reached: a bench without them measures nothing.
    async fn create(database_url: &str, nats_url: &str) -> anyhow::Result<Remote> {
        let admin = tokio::time::timeout(
            Duration::from_secs(10),
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(2)
                .connect(database_url),
        )
        .await
        .map_err(|_| {
            anyhow!("PostgreSQL is not reachable at {database_url} (no connection within 10 s)")
        })?
        .with_context(|| format!("PostgreSQL is not reachable at {database_url}"))?;
        let nats = tokio::time::timeout(Duration::from_secs(10), async_nats::connect(nats_url))
            .await
            .map_err(|_| {
                anyhow!("NATS is not reachable at {nats_url} (no connection within 10 s)")
            })?
            .with_context(|| format!("NATS is not reachable at {nats_url}"))?;
        // A raw request: async-nats 0.51's `query_account` cannot parse a 2.9 server's answer.
        let info = nats
            .request("$JS.API.INFO", Default::default())
            .await
            .with_context(|| format!("NATS at {nats_url} has no JetStream"))?;
        let info: Value = serde_json::from_slice(&info.payload)?;
        ensure!(
            info.get("error").is_none(),
            "NATS at {nats_url} has no JetStream: {info}"
        );
        let id = Uuid::new_v4().simple().to_string();
        let schema = format!("bench_{id}");
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&admin)
            .await
            .context("creating the bench schema")?;
        Ok(Remote {
            database_url: database_url.to_string(),
            nats_url: nats_url.to_string(),
            prefix: schema.clone(),
            schema,
            admin,
        })
    }

    fn backend_config(&self) -> BackendConfig {
        let separator = if self.database_url.contains('?') {
            '&'
        } else {
            '?'
        };
        BackendConfig {
            database_url: Some(format!(
                "{}{separator}options[search_path]={}",
                self.database_url, self.schema
            )),
            nats_url: Some(self.nats_url.clone()),
            nats_prefix: self.prefix.clone(),
            ..BackendConfig::default()
        }
    }

    /// Drops the schema and the JetStream streams; says so, or says what was left.
    async fn remove(&self) -> anyhow::Result<()> {
        let mut left = vec![];
        if let Err(e) = sqlx::query(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema))
            .execute(&self.admin)
            .await
        {
            left.push(format!("schema {} ({e})", self.schema));
        }
        let subjects = Subjects::new(&self.prefix);
        match async_nats::connect(self.nats_url.as_str()).await {
            Ok(client) => {
                let js = async_nats::jetstream::new(client);
                for suffix in ["EVENTS", "TASKS"] {
                    let name = subjects.stream_name(suffix);
                    if let Err(e) = js.delete_stream(&name).await {
                        // A scenario that never connected the backends made no streams.
                        if !e.to_string().contains("not found") {
                            left.push(format!("stream {name} ({e})"));
                        }
                    }
                }
            }
            Err(e) => left.push(format!("streams of prefix {} ({e})", self.prefix)),
        }
        self.admin.close().await;
        ensure!(left.is_empty(), "cleanup left behind: {}", left.join("; "));
        println!(
            "\ncleaned up: schema {} dropped, streams {} and {} deleted",
            self.schema,
            subjects.stream_name("EVENTS"),
            subjects.stream_name("TASKS")
        );
        Ok(())
    }
}

async fn scenarios(env: &Remote, sizes: &Sizes, chosen: &[String]) -> anyhow::Result<()> {
    let config = env.backend_config();
    let backends = Backends::connect(&config)
        .await
        .context("connecting the backends (PostgreSQL store, NATS bus and queue)")?;
    println!(
        "backends: {}; store pool of {} connections",
        backends.description, config.db_max_connections
    );
    stand_in_for_a_worker(&backends).await?;
    // The memory scenario measures an `api` process of its own, not the one in this process.
    let needs_api = chosen
        .iter()
        .any(|s| !matches!(s.as_str(), "throughput" | "memory"));
    let api = match needs_api {
        true => Some(Api::start(backends.clone()).await?),
        false => None,
    };
    let result = async {
        for name in chosen {
            match (name.as_str(), &api) {
                ("throughput", _) => throughput(&backends, sizes).await?,
                ("sse", Some(api)) => sse_latency(&backends, api, sizes).await?,
                ("replay", Some(api)) => replay(&backends, api, sizes).await?,
                ("accept", Some(api)) => accept(api, sizes).await?,
                ("memory", _) => memory(&backends, env, sizes).await?,
                _ => unreachable!("scenario names are checked and the api runs when needed"),
            }
        }
        anyhow::Ok(())
    }
    .await;
    if let Some(api) = api {
        api.stop().await;
    }
    result
}

/// No worker runs in the bench, yet the api accepts a task only for a provider a live
/// worker serves: the bench says in the store, as a worker would, that one serves
/// `simulated`, for longer than any run lasts.
async fn stand_in_for_a_worker(backends: &Backends) -> anyhow::Result<()> {
    let offers = vec![troupe_events::providers::Offer {
        name: "simulated".into(),
        default_model: None,
    }];
    troupe_events::providers::Advertiser::new(
        backends.store.clone(),
        offers,
        Duration::from_secs(3600),
    )
    .advertise()
    .await
    .context("advertising the simulated provider")
}

/// The real api with one registered user: in this process on a port-0 listener, or (for
/// the memory scenario) the release `api` binary running as a process of its own.
struct Api {
    base: String,
    http: reqwest::Client,
    token: String,
    email: String,
    server: Server,
}

enum Server {
    InProcess {
        shutdown: CancellationToken,
        task: tokio::task::JoinHandle<anyhow::Result<()>>,
    },
    /// Killed when dropped, so that a failed run leaves no api behind.
    Process(tokio::process::Child),
}

impl Api {
    async fn start(backends: Backends) -> anyhow::Result<Api> {
        let tokens = Tokens::new(
            &SecretString::from(random_secret()),
            Duration::from_secs(24 * 3600),
            Duration::from_secs(4 * 3600),
        );
        let state = troupe_api::state(
            backends,
            Catalogue::builtin(),
            tokens,
            HttpConfig {
                // The benchmark submits thousands of tasks a second as one user.
                limits: troupe_api::guard::RequestLimits {
                    submits_per_user_per_minute: u32::MAX,
                    ..Default::default()
                },
                ..HttpConfig::default()
            },
        );
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(troupe_api::serve(listener, state, shutdown.clone()));
        Api::sign_up(base, Server::InProcess { shutdown, task }).await
    }

    /// Registers the bench's user on a running api.
    async fn sign_up(base: String, server: Server) -> anyhow::Result<Api> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        let email = format!("bench-{}@example.com", Uuid::new_v4().simple());
        let response = http
            .post(format!("{base}/api/auth/register"))
            .json(&json!({"email": email, "password": "bench-password-1234"}))
            .send()
            .await
            .context("registering the bench user")?;
        ensure!(
            response.status() == reqwest::StatusCode::CREATED,
            "register answered {}: {}",
            response.status(),
            response.text().await.unwrap_or_default()
        );
        let body: Value = response.json().await?;
        let token = body["token"]
            .as_str()
            .ok_or_else(|| anyhow!("register returned no token: {body}"))?
            .to_string();
        // Informative only: the bench needs the api to serve, not to call itself ready.
        let ready = http.get(format!("{base}/readyz")).send().await?;
        println!(
            "api on {base}; GET /readyz: {} {}",
            ready.status().as_u16(),
            ready.text().await.unwrap_or_default()
        );
        Ok(Api {
            base,
            http,
            token,
            email,
            server,
        })
    }

    async fn create_task(&self) -> anyhow::Result<Uuid> {
        let response = self
            .http
            .post(format!("{}/api/tasks", self.base))
            .bearer_auth(&self.token)
            .json(&task_request())
            .send()
            .await?;
        ensure!(
            response.status() == reqwest::StatusCode::ACCEPTED,
            "POST /api/tasks answered {}: {}",
            response.status(),
            response.text().await.unwrap_or_default()
        );
        let body: Value = response.json().await?;
        body["taskId"]
            .as_str()
            .and_then(|id| id.parse().ok())
            .ok_or_else(|| anyhow!("POST /api/tasks returned no taskId: {body}"))
    }

    fn events_url(&self, task_id: Uuid) -> String {
        format!("{}/api/tasks/{task_id}/events", self.base)
    }

    async fn stop(self) {
        match self.server {
            Server::InProcess { shutdown, task } => stop_in_process(shutdown, task).await,
            Server::Process(mut child) => {
                if let Err(e) = child.kill().await {
                    eprintln!("the api process could not be stopped: {e}");
                }
            }
        }
    }
}

async fn stop_in_process(
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    shutdown.cancel();
    let abort = task.abort_handle();
    match tokio::time::timeout(Duration::from_secs(10), task).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => eprintln!("the api stopped with an error: {e:#}"),
        Ok(Err(e)) => eprintln!("the api task failed: {e}"),
        Err(_) => {
            eprintln!("the api did not stop within 10 s; aborted");
            abort.abort();
        }
    }
}

/// A JWT secret of 64 hex characters.
fn random_secret() -> String {
    format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple())
}

fn task_request() -> Value {
    json!({"description": "bench", "selectedAgents": ["qa"], "provider": "simulated"})
}

fn token_event(task_id: Uuid, seq: u64, delta: String) -> RawEvent {
    Event::new(
        task_id,
        seq,
        EventBody::AgentToken {
            agent_role: "qa".into(),
            delta,
            attempt: 1,
        },
    )
    .to_raw()
}

fn terminal_event(task_id: Uuid, seq: u64) -> RawEvent {
    Event::new(
        task_id,
        seq,
        EventBody::TaskComplete {
            usage: None,
            total_execution_time: 0,
            outputs: vec![],
        },
    )
    .to_raw()
}

fn micros_histogram() -> Histogram<u64> {
    // 1 µs to 1 h at 3 significant figures.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
}

fn per_sec(count: usize, elapsed: Duration) -> String {
    group(((count as f64) / elapsed.as_secs_f64()) as u64)
}

/// 1234567 -> "1,234,567": figures that are read off a table.
fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ms(micros: u64) -> String {
    format!("{:.2} ms", micros as f64 / 1000.0)
}

fn quantiles(h: &Histogram<u64>) -> String {
    format!(
        "p50 {}  p90 {}  p99 {}  max {}",
        ms(h.value_at_quantile(0.50)),
        ms(h.value_at_quantile(0.90)),
        ms(h.value_at_quantile(0.99)),
        ms(h.max())
    )
}

fn row(label: &str, value: impl std::fmt::Display) {
    println!("  {label:<37} {value}");
}

fn heading(title: &str) {
    println!("\n== {title}");
}

// ---------------------------------------------------------------------------------------
// 1. append + publish throughput

/// Tasks written to by the store directly, as a worker's appender would, owned by one user.
async fn bench_tasks(backends: &Backends, count: usize) -> anyhow::Result<Vec<Uuid>> {
    let store = backends.store.as_ref();
    let user = store
        .create_user(
            &format!("bench-{}@example.com", Uuid::new_v4().simple()),
            "not a password hash: this user never logs in",
        )
        .await?;
    tasks_of(store, user.id, count).await
}

/// `count` tasks of one qa agent owned by `owner`, made by the store (seq 1, `task_created`)
/// and marked dispatched: no worker runs in the bench, none should be queued.
async fn tasks_of(store: &dyn Store, owner: Uuid, count: usize) -> anyhow::Result<Vec<Uuid>> {
    let qa = Catalogue::builtin()
        .get("qa")
        .cloned()
        .ok_or_else(|| anyhow!("the built-in catalogue has no qa agent"))?;
    let mut ids = Vec::with_capacity(count);
    for _ in 0..count {
        let task = NewTask {
            id: Uuid::now_v7(),
            owner_id: owner,
            spec: TaskSpec {
                budget: None,
                fallback: None,
                timeout_secs: None,
                title: "bench".into(),
                description: "bench".into(),
                agents: vec![qa.clone()],
                execution_mode: ExecutionMode::Sequential,
                provider: "simulated".into(),
                model: None,
                provider_options: Default::default(),
            },
            idempotency_key: None,
            request_hash: "bench".into(),
            active_limit: None,
        };
        let id = store.create_task(&task).await?.task().id;
        // No worker runs here: keep the outbox dispatcher from queueing these later.
        store
            .mark_dispatched(&[troupe_events::Dispatch {
                task_id: id,
                seq: 1,
            }])
            .await?;
        ids.push(id);
    }
    Ok(ids)
}

struct Throughput {
    stored: usize,
    stored_in: Duration,
    received: usize,
    received_in: Duration,
    append: Histogram<u64>,
    publish: Histogram<u64>,
}

/// Every task written by its own writer (append a batch, then publish it), every task
/// followed by its own bus subscription that checks order and counts.
/// A result row: how many events in how long, and the rate.
fn rate_row(label: &str, count: usize, took: Duration) {
    row(
        label,
        format!(
            "{} events in {:.3} s = {} events/s",
            group(count as u64),
            took.as_secs_f64(),
            per_sec(count, took)
        ),
    );
}

/// The SSE replay of a finished task, checked to have started.
async fn open_replay(api: &Api, task_id: Uuid) -> anyhow::Result<reqwest::Response> {
    let response = api
        .http
        .get(api.events_url(task_id))
        .bearer_auth(&api.token)
        .send()
        .await?;
    ensure!(
        response.status() == reqwest::StatusCode::OK,
        "SSE replay answered {}",
        response.status()
    );
    Ok(response)
}

fn report_throughput(t: &Throughput) {
    row(
        "stored (committed)",
        format!(
            "{} events in {:.2} s = {} events/s",
            group(t.stored as u64),
            t.stored_in.as_secs_f64(),
            per_sec(t.stored, t.stored_in)
        ),
    );
    row(
        "received on the bus",
        format!(
            "{} events in {:.2} s = {} events/s",
            group(t.received as u64),
            t.received_in.as_secs_f64(),
            per_sec(t.received, t.received_in)
        ),
    );
    row("append of one batch", quantiles(&t.append));
    row("publish of one batch", quantiles(&t.publish));
}

async fn append_and_publish(
    backends: &Backends,
    tasks: &[Uuid],
    per_task: usize,
    batch: usize,
) -> anyhow::Result<Throughput> {
    let received = Arc::new(AtomicUsize::new(0));
    let last_received_ns = Arc::new(AtomicU64::new(0));
    let mut subscriptions = Vec::with_capacity(tasks.len());
    for &task_id in tasks {
        subscriptions.push((task_id, backends.bus.subscribe(task_id).await?));
    }
    let start = Instant::now();
    let mut readers = JoinSet::new();
    for (task_id, mut live) in subscriptions {
        let (received, last_received_ns) = (received.clone(), last_received_ns.clone());
        readers.spawn(async move {
            let mut next = 2;
            let mut count = 0;
            while count < per_task {
                let Some(event) = live.next().await else {
                    break;
                };
                // The bus may drop, but must not reorder or repeat one publisher's events.
                ensure!(
                    event.seq >= next,
                    "task {task_id}: bus delivered seq {} after {}",
                    event.seq,
                    next - 1
                );
                next = event.seq + 1;
                count += 1;
                received.fetch_add(1, Ordering::Relaxed);
                last_received_ns.fetch_max(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
            }
            anyhow::Ok(count)
        });
    }

    let mut writers = JoinSet::new();
    for &task_id in tasks {
        let (store, bus) = (backends.store.clone(), backends.bus.clone());
        writers.spawn(async move {
            let (mut append, mut publish) = (micros_histogram(), micros_histogram());
            let mut last_seq = 1u64;
            let mut left = per_task;
            while left > 0 {
                let n = left.min(batch);
                let events: Vec<RawEvent> = (0..n as u64)
                    .map(|i| token_event(task_id, last_seq + 1 + i, TOKEN_TEXT.into()))
                    .collect();
                let t = Instant::now();
                store.append(task_id, &events).await?;
                append.saturating_record(t.elapsed().as_micros() as u64);
                let t = Instant::now();
                bus.publish(&events).await?;
                publish.saturating_record(t.elapsed().as_micros() as u64);
                last_seq += n as u64;
                left -= n;
            }
            anyhow::Ok((append, publish))
        });
    }
    let (mut append, mut publish) = (micros_histogram(), micros_histogram());
    while let Some(joined) = writers.join_next().await {
        let (a, p) = joined??;
        append.add(a)?;
        publish.add(p)?;
    }
    let stored_in = start.elapsed();
    let stored = tasks.len() * per_task;

    // Whatever the bus still has in flight arrives within a few seconds, or never.
    let drained = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(joined) = readers.join_next().await {
            joined??;
        }
        anyhow::Ok(())
    })
    .await;
    match drained {
        Ok(result) => result?,
        Err(_) => readers.abort_all(),
    }
    Ok(Throughput {
        stored,
        stored_in,
        received: received.load(Ordering::Relaxed),
        received_in: Duration::from_nanos(last_received_ns.load(Ordering::Relaxed)),
        append,
        publish,
    })
}

async fn throughput(backends: &Backends, sizes: &Sizes) -> anyhow::Result<()> {
    heading("1. append + publish throughput (Store::append then Bus::publish, like the appender)");
    let event_bytes = token_event(Uuid::now_v7(), 2, TOKEN_TEXT.into()).json.len();
    let tasks = bench_tasks(backends, sizes.tasks + 1).await?;
    let (many, single) = tasks.split_at(sizes.tasks);

    let t = append_and_publish(backends, many, sizes.events_per_task, sizes.batch).await?;
    row(
        "concurrent tasks",
        format!(
            "{} tasks x {} agent_token events ({event_bytes} B of JSON each), batches of {}",
            sizes.tasks,
            group(sizes.events_per_task as u64),
            sizes.batch
        ),
    );
    report_throughput(&t);
    let lost = t.stored.saturating_sub(t.received);

    let s = append_and_publish(backends, single, sizes.single_task_events, sizes.batch).await?;
    row(
        "single task",
        format!(
            "{} events, batches of {}",
            group(sizes.single_task_events as u64),
            sizes.batch
        ),
    );
    report_throughput(&s);
    let lost = lost + s.stored.saturating_sub(s.received);
    // The bus is best effort by design (readers fill gaps from the store), so a loss here is
    // reported rather than failed; on one quiet machine it should be zero.
    if lost > 0 {
        println!("  WARNING: {lost} published events never reached their bus subscriber");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 2. append-to-client latency, many SSE clients on one task

/// The seq of the last event a client saw, its token events' latencies, and how many.
struct ClientReport {
    last_seq: u64,
    tokens: u64,
    latency: Histogram<u64>,
    terminal: bool,
}

/// Nanoseconds since the epoch, written by the bench into the token's text at append time.
fn sent_at(data: &str) -> Option<u64> {
    let start = data.find("\"delta\":\"t=")? + "\"delta\":\"t=".len();
    let digits = &data[start..];
    let end = digits.find(|c: char| !c.is_ascii_digit())?;
    digits[..end].parse().ok()
}

async fn sse_client(
    http: reqwest::Client,
    url: String,
    token: String,
    connected: Arc<AtomicUsize>,
    stall: Duration,
) -> anyhow::Result<ClientReport> {
    let response = http.get(&url).bearer_auth(&token).send().await?;
    ensure!(
        response.status() == reqwest::StatusCode::OK,
        "GET {url} answered {}",
        response.status()
    );
    let mut events = response.bytes_stream().eventsource();
    let mut report = ClientReport {
        last_seq: 0,
        tokens: 0,
        latency: micros_histogram(),
        terminal: false,
    };
    loop {
        let next = tokio::time::timeout(stall, events.next())
            .await
            .map_err(|_| anyhow!("no event for {stall:?} after seq {}", report.last_seq))?;
        let Some(event) = next else { break };
        let event = event.map_err(|e| anyhow!("SSE stream broke: {e}"))?;
        let received = since_epoch().as_nanos() as u64;
        let seq: u64 = event
            .id
            .parse()
            .with_context(|| format!("SSE id {:?} is not a seq", event.id))?;
        ensure!(
            seq == report.last_seq + 1,
            "event seq {seq} after seq {}: {}",
            report.last_seq,
            if seq <= report.last_seq {
                "duplicate"
            } else {
                "gap"
            }
        );
        report.last_seq = seq;
        match event.event.as_str() {
            "task_created" => {
                connected.fetch_add(1, Ordering::Relaxed);
            }
            "agent_token" => {
                let sent = sent_at(&event.data)
                    .ok_or_else(|| anyhow!("token {seq} carries no send time"))?;
                report
                    .latency
                    .saturating_record(received.saturating_sub(sent) / 1_000);
                report.tokens += 1;
            }
            "task_complete" => report.terminal = true,
            other => bail!("unexpected event type {other}"),
        }
    }
    Ok(report)
}

fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

async fn sse_latency(backends: &Backends, api: &Api, sizes: &Sizes) -> anyhow::Result<()> {
    let clients = sizes.sse_clients;
    let events = (sizes.sse_rate * sizes.sse_secs) as usize;
    heading(&format!(
        "2. append-to-client latency: {clients} SSE clients on one task, {} events/s for {} s",
        sizes.sse_rate, sizes.sse_secs
    ));
    // Each client is two sockets in this process (its own and the api's end).
    let needed = clients as u64 * 2 + 200;
    if let Some(limit) = open_files_limit() {
        ensure!(
            limit >= needed,
            "{clients} SSE clients need about {needed} open files, the limit is {limit}: run `ulimit -n {needed}` first"
        );
    }
    let task_id = api.create_task().await?;
    // Only the bench writes this task: no worker runs, so its log holds seq 1 alone.
    let url = api.events_url(task_id);
    let connected = Arc::new(AtomicUsize::new(0));
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(0)
        .build()?;
    let stall = Duration::from_secs(60);
    let opened = Instant::now();
    let mut readers = JoinSet::new();
    for _ in 0..clients {
        readers.spawn(sse_client(
            http.clone(),
            url.clone(),
            api.token.clone(),
            connected.clone(),
            stall,
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while connected.load(Ordering::Relaxed) < clients {
        if let Some(Ok(Err(e))) = readers.try_join_next() {
            readers.abort_all();
            return Err(e.context("an SSE client failed while connecting"));
        }
        if Instant::now() > deadline {
            readers.abort_all();
            bail!(
                "only {} of {clients} SSE clients connected within 120 s",
                connected.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connect_time = opened.elapsed();

    // One event per append, on a fixed schedule: a late append does not delay the next one's
    // slot, and its own latency counts from its own send time. The writer stands for a
    // worker, another process: it runs on a thread of its own (still driven by this
    // runtime's reactor and timers), not queued behind the api's and the clients' tasks.
    let (store, bus) = (backends.store.clone(), backends.bus.clone());
    let (rate, runtime) = (sizes.sse_rate, tokio::runtime::Handle::current());
    let writer = tokio::task::spawn_blocking(move || {
        runtime.block_on(async move {
            let interval = Duration::from_secs_f64(1.0 / rate as f64);
            let mut append = micros_histogram();
            let started = tokio::time::Instant::now();
            let writing = Instant::now();
            for i in 0..events as u64 {
                tokio::time::sleep_until(started + interval * i as u32).await;
                let delta = format!("t={};{TOKEN_TEXT}", since_epoch().as_nanos());
                let event = [token_event(task_id, 2 + i, delta)];
                let t = Instant::now();
                store.append(task_id, &event).await?;
                append.saturating_record(t.elapsed().as_micros() as u64);
                bus.publish(&event).await?;
            }
            let written_in = writing.elapsed();
            let terminal = [terminal_event(task_id, 2 + events as u64)];
            store.append(task_id, &terminal).await?;
            bus.publish(&terminal).await?;
            anyhow::Ok((append, written_in, writing))
        })
    });
    let written = writer.await?;
    if written.is_err() {
        readers.abort_all();
    }
    let (append, written_in, writing) = written?;
    let last_seq = 2 + events as u64;

    let mut latency = micros_histogram();
    let (mut tokens, mut complete, mut failures) = (0u64, 0usize, vec![]);
    while let Some(joined) = readers.join_next().await {
        match joined? {
            Ok(report) => {
                latency.add(&report.latency)?;
                tokens += report.tokens;
                if report.terminal && report.last_seq == last_seq {
                    complete += 1;
                } else {
                    failures.push(format!(
                        "a client's stream ended at seq {} of {last_seq}",
                        report.last_seq
                    ));
                }
            }
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    let drained_in = writing.elapsed();
    let expected = clients as u64 * events as u64;
    row(
        "clients connected",
        format!(
            "{clients} (all had seq 1) in {:.2} s",
            connect_time.as_secs_f64()
        ),
    );
    row(
        "events appended",
        format!(
            "{} (one per transaction) in {:.2} s = {} events/s",
            group(events as u64),
            written_in.as_secs_f64(),
            per_sec(events, written_in)
        ),
    );
    row("append (commit) latency", quantiles(&append));
    row(
        "events received by clients",
        format!(
            "{} of {} expected (clients x events); {complete} streams ended after task_complete",
            group(tokens),
            group(expected)
        ),
    );
    row(
        "deliveries per second",
        format!(
            "{} SSE events/s to clients (until the last stream ended, {:.2} s)",
            per_sec(tokens as usize, drained_in),
            drained_in.as_secs_f64()
        ),
    );
    row("append-to-client latency", quantiles(&latency));
    if !failures.is_empty() {
        failures.sort();
        failures.dedup();
        bail!(
            "{} SSE clients failed; first: {}",
            clients - complete,
            failures[0]
        );
    }
    ensure!(
        tokens == expected,
        "SSE clients received {tokens} token events, expected {expected}: events were lost or repeated"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 3. replay of a long log

/// Appends `count` token events after seq `after`, `batch` per transaction; returns the
/// bytes of JSON written.
async fn append_tokens(
    store: &dyn Store,
    task_id: Uuid,
    after: u64,
    count: usize,
    batch: usize,
) -> anyhow::Result<usize> {
    let (mut seq, end, mut bytes) = (after, after + count as u64, 0);
    while seq < end {
        let n = (end - seq).min(batch as u64);
        let events: Vec<RawEvent> = (1..=n)
            .map(|i| token_event(task_id, seq + i, TOKEN_TEXT.into()))
            .collect();
        bytes += events.iter().map(|e| e.json.len()).sum::<usize>();
        store.append(task_id, &events).await?;
        seq += n;
    }
    Ok(bytes)
}

async fn replay(backends: &Backends, api: &Api, sizes: &Sizes) -> anyhow::Result<()> {
    let total = sizes.replay_events;
    heading(&format!(
        "3. replay of a finished task's log of {} events",
        group(total as u64 + 2)
    ));
    let task_id = api.create_task().await?;
    let store = &backends.store;
    let writing = Instant::now();
    append_tokens(store.as_ref(), task_id, 1, total, sizes.replay_batch).await?;
    let last_seq = total as u64 + 2;
    store
        .append(task_id, &[terminal_event(task_id, last_seq)])
        .await?;
    let written_in = writing.elapsed();
    row(
        "log written (Store::append only)",
        format!(
            "{} events in batches of {} in {:.2} s = {} events/s",
            group(total as u64),
            group(sizes.replay_batch as u64),
            written_in.as_secs_f64(),
            per_sec(total, written_in)
        ),
    );

    // (a) the store, page by page, as the catch-up subscription reads it.
    let start = Instant::now();
    let (mut after, mut count) = (0u64, 0usize);
    loop {
        let page = store.events_after(task_id, after, 1000).await?;
        let Some(last) = page.last() else { break };
        ensure!(
            last.seq == after + page.len() as u64,
            "events_after({after}) returned a page that is not consecutive"
        );
        after = last.seq;
        count += page.len();
    }
    let paged_in = start.elapsed();
    ensure!(
        count as u64 == last_seq,
        "paging read {count} events of {last_seq}"
    );
    rate_row("(a) Store::events_after, 1,000/page", count, paged_in);

    // (b) the SSE endpoint replaying a finished task to its end.
    let start = Instant::now();
    let response = open_replay(api, task_id).await?;
    let mut stream = response.bytes_stream().eventsource();
    let (mut count, mut last) = (0usize, 0u64);
    while let Some(event) = stream.next().await {
        let event = event.map_err(|e| anyhow!("SSE replay broke: {e}"))?;
        let seq: u64 = event.id.parse()?;
        ensure!(seq == last + 1, "SSE replay sent seq {seq} after {last}");
        last = seq;
        count += 1;
    }
    let sse_in = start.elapsed();
    ensure!(
        last == last_seq,
        "SSE replay ended at seq {last} of {last_seq}"
    );
    rate_row("(b) SSE replay, eventsource client", count, sse_in);

    // (b') the same, the client only counting frames: what the server alone sustains.
    let start = Instant::now();
    let response = open_replay(api, task_id).await?;
    let mut body = response.bytes_stream();
    let (mut frames, mut bytes, mut newline) = (0usize, 0usize, false);
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        bytes += chunk.len();
        // Every SSE event ends with an empty line; no heartbeat comes in so short a replay.
        for &b in chunk.iter() {
            let is_newline = b == b'\n';
            frames += usize::from(is_newline && newline);
            newline = is_newline;
        }
    }
    let raw_in = start.elapsed();
    ensure!(
        frames as u64 == last_seq,
        "SSE replay sent {frames} frames, the log has {last_seq} events"
    );
    row(
        "(b') SSE replay, frames counted only",
        format!(
            "{} events ({:.1} MB) in {:.3} s = {} events/s",
            group(frames as u64),
            bytes as f64 / 1e6,
            raw_in.as_secs_f64(),
            per_sec(frames, raw_in)
        ),
    );

    // (c) the NDJSON export.
    let start = Instant::now();
    let response = api
        .http
        .get(api.events_url(task_id))
        .bearer_auth(&api.token)
        .header("accept", "application/x-ndjson")
        .send()
        .await?;
    ensure!(
        response.status() == reqwest::StatusCode::OK,
        "NDJSON export answered {}",
        response.status()
    );
    let mut body = response.bytes_stream();
    let (mut lines, mut bytes) = (0usize, 0usize);
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        bytes += chunk.len();
        lines += chunk.iter().filter(|&&b| b == b'\n').count();
    }
    let ndjson_in = start.elapsed();
    ensure!(
        lines as u64 == last_seq,
        "NDJSON export had {lines} lines, the log {last_seq} events"
    );
    row(
        "(c) NDJSON export over HTTP",
        format!(
            "{} events ({:.1} MB) in {:.3} s = {} events/s",
            group(lines as u64),
            bytes as f64 / 1e6,
            ndjson_in.as_secs_f64(),
            per_sec(lines, ndjson_in)
        ),
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 4. tasks accepted per second

async fn accept(api: &Api, sizes: &Sizes) -> anyhow::Result<()> {
    heading(&format!(
        "4. tasks accepted: POST /api/tasks, {} concurrent clients, no worker",
        sizes.accept_concurrency
    ));
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .build()?;
    let submit = |_| {
        let (http, url, token) = (
            http.clone(),
            format!("{}/api/tasks", api.base),
            api.token.clone(),
        );
        async move {
            let t = Instant::now();
            let response = http
                .post(url)
                .bearer_auth(token)
                .json(&task_request())
                .send()
                .await?;
            let status = response.status();
            // Reading the body is part of the request: the client has its taskId only then.
            let body = response.bytes().await?;
            ensure!(
                status == reqwest::StatusCode::ACCEPTED,
                "POST /api/tasks answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
            anyhow::Ok(t.elapsed())
        }
    };
    // Warm up the connections and the server's pools; not counted.
    let warm_up = sizes.accept_concurrency * 2;
    let mut warming = futures::stream::iter(0..warm_up)
        .map(submit)
        .buffer_unordered(sizes.accept_concurrency);
    while let Some(done) = warming.next().await {
        done?;
    }
    let start = Instant::now();
    let mut latency = micros_histogram();
    let mut submits = futures::stream::iter(0..sizes.accept_tasks)
        .map(submit)
        .buffer_unordered(sizes.accept_concurrency);
    while let Some(done) = submits.next().await {
        latency.saturating_record(done?.as_micros() as u64);
    }
    let elapsed = start.elapsed();
    row(
        "tasks accepted (202)",
        format!(
            "{} in {:.2} s = {} tasks/s (after {warm_up} not counted)",
            group(sizes.accept_tasks as u64),
            elapsed.as_secs_f64(),
            per_sec(sizes.accept_tasks, elapsed)
        ),
    );
    row("latency per submit", quantiles(&latency));
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 5. the api's memory, as a process of its own

/// How long the api gets to free what a phase used before its RSS is read again.
const SETTLE: Duration = Duration::from_secs(3);
/// What a stalling client reads before it stops: a few KiB.
const STALL_AFTER_BYTES: usize = 4096;

async fn memory(backends: &Backends, env: &Remote, sizes: &Sizes) -> anyhow::Result<()> {
    heading(
        "5. api memory: the release `api` binary as its own process, RSS from /proc/<pid>/status",
    );
    let api = Api::spawn(env).await?;
    let result = memory_phases(backends, &api, sizes).await;
    api.stop().await;
    result
}

async fn memory_phases(backends: &Backends, api: &Api, sizes: &Sizes) -> anyhow::Result<()> {
    let (pid, store, started) = (api.pid()?, backends.store.as_ref(), Instant::now());
    tokio::time::sleep(SETTLE).await;
    row(
        "api RSS idle (user registered)",
        format!("{} (pid {pid})", mib(read_memory(pid)?.rss)),
    );
    let owner = store
        .user_by_email(&api.email)
        .await?
        .ok_or_else(|| anyhow!("the registered bench user is not in the store"))?
        .id;
    let stall = Duration::from_secs(sizes.memory_stall_secs);
    let long = seed_long_log(store, owner, sizes.memory_events).await?;
    stalled_view(api, &long, stall).await?;
    stalled_sse(api, &long, stall).await?;
    let large = seed_large_outputs(store, owner, sizes.memory_tasks).await?;
    // Later waves show whether what one wave leaves resident is reused or keeps growing.
    for wave in 1..=sizes.memory_waves {
        replay_wave(api, &large, sizes.memory_clients, wave).await?;
    }
    row(
        "scenario time",
        format!(
            "{:.1} s from the api's start to here (its build not counted)",
            started.elapsed().as_secs_f64()
        ),
    );
    Ok(())
}

impl Api {
    /// The release `api` binary on a free port, on the run's schema and NATS prefix.
    async fn spawn(env: &Remote) -> anyhow::Result<Api> {
        let binary = api_binary().await?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let database_url = env.backend_config().database_url.unwrap_or_default();
        let mut child = tokio::process::Command::new(&binary)
            .env("DATABASE_URL", database_url)
            .env("NATS_URL", &env.nats_url)
            .env("TROUPE_NATS_PREFIX", &env.prefix)
            .env("TROUPE_JWT_SECRET", random_secret())
            .env("TROUPE_SUBMITS_PER_MINUTE", "1000000")
            // Its worker runs in the bench's process with no limit: the api must not set one.
            .env("TROUPE_ACTIVE_TASKS_PER_USER", "0")
            .env("TROUPE_BIND", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "warn")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let base = format!("http://127.0.0.1:{port}");
        wait_until_healthy(&base, &mut child).await?;
        Api::sign_up(base, Server::Process(child)).await
    }

    fn pid(&self) -> anyhow::Result<u32> {
        match &self.server {
            Server::Process(child) => child.id().ok_or_else(|| anyhow!("the api process exited")),
            Server::InProcess { .. } => bail!("the api runs inside the bench"),
        }
    }

    fn port(&self) -> anyhow::Result<u16> {
        let port = self.base.rsplit(':').next().and_then(|p| p.parse().ok());
        port.ok_or_else(|| anyhow!("no port in {}", self.base))
    }
}

/// `BENCH_API_BIN`, or `api` next to this bench in target/release, built first with
/// `cargo build --release -p troupe-api --bin api` so that it is the code being measured.
async fn api_binary() -> anyhow::Result<PathBuf> {
    if let Ok(path) = std::env::var("BENCH_API_BIN") {
        row("api binary", format!("{path} (BENCH_API_BIN)"));
        return Ok(path.into());
    }
    let exe = std::env::current_exe()?;
    let release = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow!("{} is not in target/<profile>/deps", exe.display()))?;
    let target = release.parent().unwrap_or(release);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let started = Instant::now();
    let status = tokio::process::Command::new(cargo)
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "troupe-api",
            "--bin",
            "api",
        ])
        .env("CARGO_TARGET_DIR", target)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .await
        .context("running cargo build --release -p troupe-api --bin api")?;
    ensure!(
        status.success(),
        "cargo build --release -p troupe-api --bin api failed ({status})"
    );
    let binary = release.join("api");
    row(
        "api binary",
        format!(
            "{} (cargo build --release -p troupe-api --bin api: {:.1} s)",
            binary.display(),
            started.elapsed().as_secs_f64()
        ),
    );
    Ok(binary)
}

async fn wait_until_healthy(base: &str, child: &mut tokio::process::Child) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("the api process exited at start ({status}); its log is above");
        }
        let health = http.get(format!("{base}/healthz")).send().await;
        if health.is_ok_and(|r| r.status().is_success()) {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "the api process did not answer GET /healthz within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A client with no idle pool: a connection closes when its response is dropped, so the
/// api's RSS "after" has no idle keep-alive connections in it.
fn fresh_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(0)
        .build()?)
}

/// Resident memory of a process, in KiB: now (VmRSS) and its high-water mark (VmHWM).
struct Memory {
    rss: u64,
    hwm: u64,
}

fn read_memory(pid: u32) -> anyhow::Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status: has the api exited?"))?;
    let field = |name: &str| {
        let line = status.lines().find(|l| l.starts_with(name));
        let kib = line.and_then(|l| l.split_whitespace().nth(1)?.parse().ok());
        kib.ok_or_else(|| anyhow!("/proc/{pid}/status has no {name}"))
    };
    Ok(Memory {
        rss: field("VmRSS:")?,
        hwm: field("VmHWM:")?,
    })
}

/// Sets the process's VmHWM back to its current RSS (`echo 5 > /proc/<pid>/clear_refs`).
fn reset_high_water_mark(pid: u32) -> anyhow::Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .with_context(|| format!("resetting VmHWM through /proc/{pid}/clear_refs"))
}

/// The api's RSS through one phase: sampled every 10 ms, and the kernel's own high-water
/// mark, reset when the phase starts.
struct RssWatch {
    pid: u32,
    before: u64,
    peak: Arc<AtomicU64>,
    stop: CancellationToken,
    sampler: tokio::task::JoinHandle<()>,
}

/// What a phase did to the api's RSS, in KiB.
struct Held {
    before: u64,
    peak: u64,
    hwm: u64,
}

impl RssWatch {
    fn start(pid: u32) -> anyhow::Result<RssWatch> {
        reset_high_water_mark(pid)?;
        let before = read_memory(pid)?.rss;
        let (peak, stop) = (Arc::new(AtomicU64::new(before)), CancellationToken::new());
        let sampler = tokio::spawn(sample_rss(pid, peak.clone(), stop.clone()));
        Ok(RssWatch {
            pid,
            before,
            peak,
            stop,
            sampler,
        })
    }

    async fn finish(self) -> anyhow::Result<Held> {
        self.stop.cancel();
        let _ = self.sampler.await;
        let now = read_memory(self.pid)?;
        Ok(Held {
            before: self.before,
            peak: self.peak.load(Ordering::Relaxed).max(now.rss),
            hwm: now.hwm,
        })
    }
}

async fn sample_rss(pid: u32, peak: Arc<AtomicU64>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => if let Ok(m) = read_memory(pid) {
                peak.fetch_max(m.rss, Ordering::Relaxed);
            },
        }
    }
}

/// The api's RSS once it has had `SETTLE` to free what the phase used.
async fn settled_rss(pid: u32) -> anyhow::Result<u64> {
    tokio::time::sleep(SETTLE).await;
    Ok(read_memory(pid)?.rss)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn change(from: u64, to: u64) -> String {
    format!("{:+.1}", (to as f64 - from as f64) / 1024.0)
}

impl Held {
    /// The higher of the sampled peak and VmHWM: the kernel sees peaks between samples.
    fn top(&self) -> u64 {
        self.peak.max(self.hwm)
    }

    fn describe(&self) -> String {
        format!(
            "before {}, peak {} ({}), VmHWM {} ({})",
            mib(self.before),
            mib(self.peak),
            change(self.before, self.peak),
            mib(self.hwm),
            change(self.before, self.hwm)
        )
    }

    fn after(&self, after: u64) -> String {
        format!("{} ({} on before)", mib(after), change(self.before, after))
    }
}

/// Bytes waiting in the kernel on the api's connections: sent by the api and not yet
/// taken by the client (`tx_queue` of the api's sockets), and received by the client and
/// not yet read (`rx_queue` of the clients' sockets). From /proc/net/tcp.
fn socket_queues(api_port: u16) -> anyhow::Result<(u64, u64)> {
    let table = std::fs::read_to_string("/proc/net/tcp")?;
    let port = |address: &str| {
        let hex = address.rsplit(':').next()?;
        u16::from_str_radix(hex, 16).ok()
    };
    let (mut sent, mut unread) = (0, 0);
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(remote), Some("01"), Some(queues)) = (
            fields.get(1),
            fields.get(2),
            fields.get(3).copied(),
            fields.get(4),
        ) else {
            continue;
        };
        let (tx, rx) = queues.split_once(':').unwrap_or(("0", "0"));
        let (tx, rx) = (
            u64::from_str_radix(tx, 16).unwrap_or(0),
            u64::from_str_radix(rx, 16).unwrap_or(0),
        );
        if port(local) == Some(api_port) {
            sent += tx;
        }
        if port(remote) == Some(api_port) {
            unread += rx;
        }
    }
    Ok((sent, unread))
}

/// Checks the `id:` lines of an SSE body as it streams by: 1, 2, 3, … with no gap or
/// repeat. Only the start of each line is kept: a `data:` line may be 500 KiB.
#[derive(Default)]
struct SseIds {
    line: Vec<u8>,
    last: u64,
    bytes: usize,
}

impl SseIds {
    fn feed(&mut self, chunk: &[u8]) -> anyhow::Result<()> {
        self.bytes += chunk.len();
        let mut rest = chunk;
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            self.keep(&rest[..end]);
            self.end_line()?;
            rest = &rest[end + 1..];
        }
        self.keep(rest);
        Ok(())
    }

    fn keep(&mut self, part: &[u8]) {
        let room = 32usize.saturating_sub(self.line.len());
        self.line.extend_from_slice(&part[..part.len().min(room)]);
    }

    fn end_line(&mut self) -> anyhow::Result<()> {
        if let Some(id) = self.line.strip_prefix(b"id: ") {
            let seq: u64 = std::str::from_utf8(id)?.trim().parse()?;
            ensure!(
                seq == self.last + 1,
                "SSE sent seq {seq} after {}",
                self.last
            );
            self.last = seq;
        }
        self.line.clear();
        Ok(())
    }
}

/// A finished task written by the bench through the store.
struct SeededTask {
    id: Uuid,
    last_seq: u64,
    bytes: usize,
}

/// `task_created`, `events` token events of `TOKEN_TEXT`, `task_complete`. There is no
/// `agent_start`, so the task view drops the tokens' text (attempt 1 of an agent that never
/// started): `GET /api/tasks/{id}` folds the whole log into a body of about 1 KB.
async fn seed_long_log(
    store: &dyn Store,
    owner: Uuid,
    events: usize,
) -> anyhow::Result<SeededTask> {
    let id = tasks_of(store, owner, 1).await?[0];
    let tokens = append_tokens(store, id, 1, events, 1000).await?;
    let last_seq = events as u64 + 2;
    let terminal = [terminal_event(id, last_seq)];
    store.append(id, &terminal).await?;
    row(
        "long log (through the store)",
        format!(
            "{} events, {:.1} MB of JSON (agent_token x {}, task_complete)",
            group(last_seq),
            (tokens + terminal[0].json.len()) as f64 / 1e6,
            group(events as u64)
        ),
    );
    Ok(SeededTask {
        id,
        last_seq,
        bytes: tokens,
    })
}

/// A response whose client read a few KiB and then stopped reading with the connection
/// open: the api's writes back up through TCP. `queues` are the kernel's at the stall's end.
struct Stalled {
    response: reqwest::Response,
    read: Vec<u8>,
    queues: (u64, u64),
}

async fn read_then_stall(
    mut response: reqwest::Response,
    stall: Duration,
    api_port: u16,
) -> anyhow::Result<Stalled> {
    ensure!(
        response.status() == reqwest::StatusCode::OK,
        "{} answered {}",
        response.url(),
        response.status()
    );
    let mut read = Vec::new();
    while read.len() < STALL_AFTER_BYTES {
        let Some(chunk) = response.chunk().await? else {
            break;
        };
        read.extend_from_slice(&chunk);
    }
    tokio::time::sleep(stall).await;
    Ok(Stalled {
        response,
        read,
        queues: socket_queues(api_port)?,
    })
}

fn stall_rows(what: &str, stalled: &Stalled, stall: Duration, held: &Held) {
    row(
        what,
        format!(
            "client read {} B, then stopped reading for {} s",
            group(stalled.read.len() as u64),
            stall.as_secs()
        ),
    );
    row("  api RSS during the stall", held.describe());
    row(
        "  kernel TCP queues at its end",
        format!(
            "api send queue {:.2} MB, client receive queue {:.2} MB",
            stalled.queues.0 as f64 / 1e6,
            stalled.queues.1 as f64 / 1e6
        ),
    );
}

/// One SSE client that stalls on the long log, then reads it to the end and checks it.
async fn stalled_sse(api: &Api, log: &SeededTask, stall: Duration) -> anyhow::Result<()> {
    let (pid, http) = (api.pid()?, fresh_client()?);
    let watch = RssWatch::start(pid)?;
    let response = http
        .get(api.events_url(log.id))
        .bearer_auth(&api.token)
        .send()
        .await?;
    let mut stalled = read_then_stall(response, stall, api.port()?).await?;
    let held = watch.finish().await?;
    let drain = RssWatch::start(pid)?;
    let mut ids = SseIds::default();
    ids.feed(&stalled.read)?;
    while let Some(chunk) = stalled.response.chunk().await? {
        ids.feed(&chunk)?;
    }
    let drained = drain.finish().await?;
    ensure!(
        ids.last == log.last_seq,
        "the stalled SSE stream ended at seq {} of {}",
        ids.last,
        log.last_seq
    );
    stall_rows("(b) GET /api/tasks/{id}/events", &stalled, stall, &held);
    drop((stalled, http));
    let after = settled_rss(pid).await?;
    row(
        "  then read on to the end",
        format!(
            "{} events ({:.1} MB) in order; api RSS peak {} ({} on before)",
            group(ids.last),
            ids.bytes as f64 / 1e6,
            mib(drained.top()),
            change(held.before, drained.top())
        ),
    );
    row("  api RSS after (closed, 3 s)", held.after(after));
    Ok(())
}

/// One client of the long log's task view that stalls, then reads the rest and checks it.
async fn stalled_view(api: &Api, log: &SeededTask, stall: Duration) -> anyhow::Result<()> {
    let (pid, http) = (api.pid()?, fresh_client()?);
    let watch = RssWatch::start(pid)?;
    let response = http
        .get(format!("{}/api/tasks/{}", api.base, log.id))
        .bearer_auth(&api.token)
        .send()
        .await?;
    let mut stalled = read_then_stall(response, stall, api.port()?).await?;
    let held = watch.finish().await?;
    let mut body = stalled.read.clone();
    while let Some(chunk) = stalled.response.chunk().await? {
        body.extend_from_slice(&chunk);
    }
    let view: Value = serde_json::from_slice(&body).context("the task view is not JSON")?;
    ensure!(
        view["lastSeq"] == json!(log.last_seq),
        "the task view has lastSeq {}, the log ends at {}",
        view["lastSeq"],
        log.last_seq
    );
    let output = view["agents"][0]["output"].as_str().map_or(0, str::len);
    stall_rows("(a) GET /api/tasks/{id}", &stalled, stall, &held);
    row(
        "  the view, read to the end",
        format!(
            "lastSeq {}; body {} B, the agent's output {} B",
            group(log.last_seq),
            group(body.len() as u64),
            group(output as u64)
        ),
    );
    drop((stalled, http));
    row(
        "  api RSS after (closed, 3 s)",
        held.after(settled_rss(pid).await?),
    );
    Ok(())
}

/// What a model might answer, `bytes` long: lines of code.
fn large_text(bytes: usize) -> String {
    const LINE: &str =
        "    let total: u64 = items.iter().map(|i| i.price * i.quantity).sum(); // answer\n";
    let mut text = LINE.repeat(bytes / LINE.len() + 1);
    text.truncate(bytes);
    text
}

/// After `task_created`: the agent starts, streams its answer in two `agent_token` events of
/// the whole text each, completes with it, and `task_complete` carries it once more.
fn large_output_log(task_id: Uuid, text: &str) -> Vec<RawEvent> {
    let (role, name) = ("qa".to_string(), "QA Engineer".to_string());
    let token = || EventBody::AgentToken {
        agent_role: role.clone(),
        delta: text.into(),
        attempt: 1,
    };
    let bodies = [
        EventBody::AgentStart {
            agent_role: role.clone(),
            agent_name: name.clone(),
            agent_description: "bench".into(),
            attempt: 1,
        },
        token(),
        token(),
        EventBody::AgentComplete {
            agent_role: role.clone(),
            status: SuccessStatus::Success,
            execution_time: 1000,
            has_artifacts: false,
            output: text.into(),
            artifacts: vec![],
        },
        EventBody::TaskComplete {
            usage: None,
            total_execution_time: 1000,
            outputs: vec![AgentOutput {
                agent_role: role.clone(),
                agent_name: name,
                output: text.into(),
            }],
        },
    ];
    (2..)
        .zip(bodies)
        .map(|(seq, body)| Event::new(task_id, seq, body).to_raw())
        .collect()
}

/// `count` finished tasks whose answers run from 200 KiB (the first) to 500 KiB (the last).
async fn seed_large_outputs(
    store: &dyn Store,
    owner: Uuid,
    count: usize,
) -> anyhow::Result<Vec<SeededTask>> {
    let mut tasks = Vec::with_capacity(count);
    for (i, id) in tasks_of(store, owner, count).await?.into_iter().enumerate() {
        let text = large_text((200 + 300 * i / (count - 1).max(1)) * 1024);
        let events = large_output_log(id, &text);
        store.append(id, &events).await?;
        tasks.push(SeededTask {
            id,
            last_seq: 1 + events.len() as u64,
            bytes: events.iter().map(|e| e.json.len()).sum(),
        });
    }
    let bytes: usize = tasks.iter().map(|t| t.bytes).sum();
    row(
        "large outputs (through the store)",
        format!(
            "{count} tasks of 6 events, answers of 200-500 KiB, each in 2 agent_token, agent_complete and task_complete: {:.1} MB of JSON",
            bytes as f64 / 1e6
        ),
    );
    Ok(tasks)
}

/// `clients` SSE clients at once, spread over the tasks, each reading its task's whole log.
async fn replay_wave(
    api: &Api,
    tasks: &[SeededTask],
    clients: usize,
    wave: usize,
) -> anyhow::Result<()> {
    let (pid, http) = (api.pid()?, fresh_client()?);
    let watch = RssWatch::start(pid)?;
    let started = Instant::now();
    let mut readers = JoinSet::new();
    for task in tasks.iter().cycle().take(clients) {
        let request = http.get(api.events_url(task.id)).bearer_auth(&api.token);
        readers.spawn(replay_to_end(request, task.last_seq));
    }
    let mut bytes = 0;
    while let Some(joined) = readers.join_next().await {
        bytes += joined??;
    }
    let took = started.elapsed();
    let held = watch.finish().await?;
    drop(http);
    let after = settled_rss(pid).await?;
    row(
        &format!("(c) wave {wave}: {clients} SSE replays"),
        format!(
            "{} tasks, every stream read to its end in order: {:.1} MB in {:.2} s",
            tasks.len().min(clients),
            bytes as f64 / 1e6,
            took.as_secs_f64()
        ),
    );
    row("  api RSS during the wave", held.describe());
    row("  api RSS after (closed, 3 s)", held.after(after));
    row(
        "  peak delta per client",
        format!(
            "{:.0} KiB (max(peak, VmHWM) - before) / {clients}",
            held.top().saturating_sub(held.before) as f64 / clients.max(1) as f64
        ),
    );
    Ok(())
}

/// Reads one SSE replay to its end, checking every id; returns the bytes read.
async fn replay_to_end(request: reqwest::RequestBuilder, last_seq: u64) -> anyhow::Result<usize> {
    let mut response = request.send().await?;
    ensure!(
        response.status() == reqwest::StatusCode::OK,
        "{} answered {}",
        response.url(),
        response.status()
    );
    let mut ids = SseIds::default();
    while let Some(chunk) = response.chunk().await? {
        ids.feed(&chunk)?;
    }
    ensure!(
        ids.last == last_seq,
        "an SSE replay ended at seq {} of {last_seq}",
        ids.last
    );
    Ok(ids.bytes)
}
