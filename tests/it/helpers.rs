//! `spawn_app`: a whole Troupe on port 0 for one test, embedded (a fresh SQLite file,
//! in-process bus) or distributed (a fresh PostgreSQL schema, a random NATS prefix, two api
//! instances and a worker, each with its own connections).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use troupe::Settings;
use troupe_api::ApiArgs;
use troupe_events::{BackendConfig, Backends, Subjects};
use troupe_worker::providers::{ProviderSettings, Providers};
use troupe_worker::{Worker, WorkerConfig};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Embedded,
    Distributed,
}

/// Generates one test per backend from `async fn name(backend: Backend)`.
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                super::$name($crate::helpers::Backend::Embedded).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn distributed() {
                super::$name($crate::helpers::Backend::Distributed).await
            }
        }
    )*};
}
pub(crate) use both_backends;

const SECRET: &str = "integration-test-secret-0123456789abcdef";

pub struct TestApp {
    /// Base URLs of the api instances: one embedded, two distributed.
    pub urls: Vec<String>,
    pub client: reqwest::Client,
    pub backend: Backend,
    /// Stop tokens of the separate workers (distributed), in start order.
    pub workers: Vec<CancellationToken>,
    shutdown: CancellationToken,
    tweaks: Tweaks,
    cleanup: Cleanup,
    data_dir: PathBuf,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

enum Cleanup {
    DataDir(PathBuf),
    Remote { schema: String, prefix: String },
}

pub fn database_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

pub fn nats_url() -> String {
    std::env::var("TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// What a test may change about the processes it starts.
#[derive(Clone)]
pub struct Tweaks {
    pub api: ApiArgs,
    pub providers: ProviderSettings,
    pub worker: WorkerConfig,
    /// How long the distributed queue waits for a heartbeat before redelivering.
    pub ack_wait: Duration,
    /// `TROUPE_ACTIVE_TASKS_PER_USER`; unset (no limit) unless a test is about it.
    pub active_tasks_per_user: Option<u32>,
    /// Separate workers a distributed app starts with.
    pub workers: usize,
}

impl Default for Tweaks {
    fn default() -> Self {
        Tweaks {
            api: api_args(),
            providers: ProviderSettings::default(),
            worker: worker_config(),
            ack_wait: Duration::from_secs(30),
            active_tasks_per_user: None,
            workers: 1,
        }
    }
}

fn api_args() -> ApiArgs {
    ApiArgs {
        bind: "127.0.0.1:0".parse().unwrap(),
        jwt_secret: Some(SECRET.into()),
        agents_file: None,
        max_body_bytes: 16 * 1024,
        max_streams: 1000,
        session_ttl_hours: 1,
        stream_token_ttl_minutes: 10,
        // Every test signs in from 127.0.0.1: tests/it/accounts.rs sets the limits it tests.
        submits_per_minute: 100_000,
        auth_per_address_per_minute: 100_000,
        auth_per_account_per_minute: 100_000,
        password_hashers: None,
        client_ip_header: None,
        max_task_secs: 3600,
        max_agents_per_task: 20,
        simulated_max_answer_secs: 300,
        secure_cookies: troupe_api::auth::SecureCookies::Auto,
    }
}

/// The simulated provider's model priced, so that costs are counted and not all zero.
pub fn priced() -> Tweaks {
    let mut tweaks = Tweaks::default();
    tweaks.worker.prices = std::sync::Arc::new(
        troupe_worker::prices::Prices::parse(
            r#"{"simulated": {"inputPerMillion": 3, "outputPerMillion": 15}}"#,
        )
        .unwrap(),
    );
    tweaks
}

pub fn worker_config() -> WorkerConfig {
    WorkerConfig {
        token_flush: Duration::from_millis(50),
        heartbeat: Duration::from_secs(1),
        poll_wait: Duration::from_millis(500),
        ..WorkerConfig::default()
    }
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> TestApp {
        TestApp::spawn_with(backend, Tweaks::default()).await
    }

    pub async fn spawn_with(backend: Backend, tweaks: Tweaks) -> TestApp {
        // Logs go to the test's captured stderr, shown when it fails.
        std::mem::forget(troupe_events::runtime::init_tracing("it"));
        let id = Uuid::new_v4().simple().to_string();
        let data_dir = std::env::temp_dir().join(format!("troupe-it-{id}"));
        match backend {
            Backend::Embedded => {
                let config = BackendConfig {
                    data_dir: data_dir.clone(),
                    active_tasks_per_user: tweaks.active_tasks_per_user,
                    ..BackendConfig::default()
                };
                let mut app = TestApp {
                    urls: vec![],
                    client: reqwest::Client::new(),
                    backend,
                    workers: vec![],
                    shutdown: CancellationToken::new(),
                    tweaks,
                    cleanup: Cleanup::DataDir(data_dir.clone()),
                    data_dir,
                    handles: vec![],
                };
                app.start_embedded(config, None).await;
                app
            }
            Backend::Distributed => {
                let schema = format!("it_{id}");
                create_schema(&schema).await;
                let prefix = format!("it_{id}");
                let config = distributed_config(&schema, &prefix, &tweaks);
                let shutdown = CancellationToken::new();
                let mut urls = vec![];
                let mut handles = vec![];
                for _ in 0..2 {
                    let backends = Backends::connect(&config).await.expect(
                        "PostgreSQL and NATS must be reachable (TEST_DATABASE_URL, TEST_NATS_URL)",
                    );
                    let state = troupe_api::state(
                        backends,
                        troupe_events::Catalogue::builtin(),
                        tweaks.api.tokens(true, &data_dir, false).unwrap(),
                        tweaks.api.http(),
                    );
                    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                    urls.push(format!("http://{}", listener.local_addr().unwrap()));
                    let stop = shutdown.clone();
                    handles.push(tokio::spawn(async move {
                        troupe_api::serve(listener, state, stop).await.unwrap();
                    }));
                }
                let mut app = TestApp {
                    urls,
                    client: reqwest::Client::new(),
                    backend,
                    workers: vec![],
                    shutdown,
                    tweaks,
                    cleanup: Cleanup::Remote { schema, prefix },
                    data_dir,
                    handles,
                };
                for _ in 0..app.tweaks.workers {
                    app.start_worker().await;
                }
                app
            }
        }
    }

    async fn start_embedded(&mut self, config: BackendConfig, bind: Option<SocketAddr>) {
        let listener = TcpListener::bind(bind.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap()))
            .await
            .unwrap();
        self.urls = vec![format!("http://{}", listener.local_addr().unwrap())];
        let settings = Settings {
            backend: config,
            api: self.tweaks.api.clone(),
            providers: self.tweaks.providers.clone(),
            worker: self.tweaks.worker.clone(),
        };
        let stop = self.shutdown.clone();
        self.handles.push(tokio::spawn(async move {
            troupe::run(settings, listener, stop).await.unwrap();
        }));
        self.wait_ready().await;
    }

    /// A further worker process on the same backends (distributed only).
    pub async fn start_worker(&mut self) -> CancellationToken {
        let providers = self.tweaks.providers.clone();
        self.start_worker_serving(&providers).await.0
    }

    /// A further worker calling `providers`, and what crashes it: aborting it stops it
    /// where it stands, without a word to the store (distributed only).
    pub async fn start_worker_serving(
        &mut self,
        providers: &ProviderSettings,
    ) -> (CancellationToken, tokio::task::AbortHandle) {
        let Cleanup::Remote { schema, prefix } = &self.cleanup else {
            panic!("separate workers exist only when distributed");
        };
        let backends = Backends::connect(&distributed_config(schema, prefix, &self.tweaks))
            .await
            .unwrap();
        let worker = std::sync::Arc::new(Worker::new(
            backends,
            Providers::from_settings(providers),
            self.tweaks.worker.clone(),
        ));
        worker.advertise().await.unwrap();
        let stop = self.shutdown.child_token();
        let token = stop.clone();
        let handle = tokio::spawn(async move { worker.run(token).await });
        let crash = handle.abort_handle();
        self.handles.push(tokio::spawn(async move {
            // A crashed worker's handle says so; that is what the test asked for.
            let _ = handle.await;
        }));
        self.workers.push(stop.clone());
        (stop, crash)
    }

    /// The providers that workers started from now on call.
    pub fn set_providers(&mut self, providers: ProviderSettings) {
        self.tweaks.providers = providers;
    }

    /// Stops the embedded process and starts it again on the same data and port, as a
    /// user restarting `troupe` would.
    pub async fn restart_embedded(&mut self) {
        assert_eq!(self.backend, Backend::Embedded);
        self.shutdown.cancel();
        for handle in self.handles.drain(..) {
            handle.await.unwrap();
        }
        self.shutdown = CancellationToken::new();
        let addr: SocketAddr = self.urls[0].trim_start_matches("http://").parse().unwrap();
        let config = BackendConfig {
            data_dir: self.data_dir.clone(),
            active_tasks_per_user: self.tweaks.active_tasks_per_user,
            ..BackendConfig::default()
        };
        self.start_embedded(config, Some(addr)).await;
    }

    async fn wait_ready(&self) {
        wait_until_ready(&self.client, &self.urls[0]).await;
    }

    /// A connection of its own to the app's store, to put in the log what another
    /// version or a fault would have written.
    pub async fn store(&self) -> std::sync::Arc<dyn troupe_events::Store> {
        match &self.cleanup {
            Cleanup::DataDir(_) => std::sync::Arc::new(
                troupe_events::SqliteStore::open(&self.data_dir.join("troupe.db"))
                    .await
                    .unwrap(),
            ),
            Cleanup::Remote { schema, prefix } => {
                Backends::connect(&distributed_config(schema, prefix, &self.tweaks))
                    .await
                    .unwrap()
                    .store
            }
        }
    }

    /// Connections of their own to the app's store, bus and queue, as a further worker
    /// process would have (distributed only).
    pub async fn backends(&self) -> Backends {
        let Cleanup::Remote { schema, prefix } = &self.cleanup else {
            panic!("separate backends exist only when distributed");
        };
        Backends::connect(&distributed_config(schema, prefix, &self.tweaks))
            .await
            .unwrap()
    }

    /// Stops every process of the app as ctrl-c would, and waits (bounded) until they
    /// have all exited.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        for handle in self.handles.drain(..) {
            tokio::time::timeout(Duration::from_secs(10), handle)
                .await
                .expect("shutdown finishes within its grace period")
                .unwrap();
        }
    }

    /// The NATS subject prefix of a distributed app.
    pub fn nats_prefix(&self) -> &str {
        match &self.cleanup {
            Cleanup::Remote { prefix, .. } => prefix,
            Cleanup::DataDir(_) => panic!("an embedded app has no NATS prefix"),
        }
    }

    /// The PostgreSQL schema of a distributed app.
    pub fn schema(&self) -> &str {
        match &self.cleanup {
            Cleanup::Remote { schema, .. } => schema,
            Cleanup::DataDir(_) => panic!("an embedded app has no PostgreSQL schema"),
        }
    }

    /// The api instance `i` (wrapping), so a test can move between instances.
    pub fn url(&self, i: usize) -> &str {
        &self.urls[i % self.urls.len()]
    }

    pub async fn register(&self, email: &str) -> String {
        let r = self
            .client
            .post(format!("{}/api/auth/register", self.url(0)))
            .json(&json!({"email": email, "password": "correct horse battery"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "register {email}");
        r.json::<Value>().await.unwrap()["token"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub async fn user(&self) -> String {
        self.register(&format!("u{}@example.com", Uuid::new_v4().simple()))
            .await
    }

    pub async fn post(&self, path: &str, token: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.url(0)))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn get(&self, path: &str, token: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.url(0)))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    /// The JSON of a GET that must succeed.
    pub async fn get_json(&self, path: &str, token: &str) -> Value {
        let response = self.get(path, token).await;
        assert!(
            response.status().is_success(),
            "GET {path}: {}",
            response.status()
        );
        response.json().await.unwrap()
    }

    /// Submits and returns the task id.
    pub async fn submit(&self, token: &str, body: &Value) -> Uuid {
        let r = self.post("/api/tasks", token, body).await;
        assert_eq!(r.status(), 202, "submit: {}", r.text().await.unwrap());
        let body: Value = r.json().await.unwrap();
        body["taskId"].as_str().unwrap().parse().unwrap()
    }

    /// `GET /api/tasks/{id}/events` on api `instance`, as the user of `token`.
    pub fn events_request(
        &self,
        instance: usize,
        token: &str,
        task_id: Uuid,
    ) -> reqwest::RequestBuilder {
        self.client
            .get(format!("{}/api/tasks/{task_id}/events", self.url(instance)))
            .bearer_auth(token)
    }

    /// Reads the task's SSE stream from api `instance` to its end, or until `limit` events.
    pub async fn read_events(
        &self,
        instance: usize,
        token: &str,
        task_id: Uuid,
        last_event_id: Option<u64>,
        limit: Option<usize>,
    ) -> Vec<SseEvent> {
        let mut request = self.events_request(instance, token, task_id);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        collect_sse(response, limit).await
    }

    /// Waits (bounded) until the task's status is terminal and returns the task view.
    pub async fn wait_finished(&self, token: &str, task_id: Uuid) -> Value {
        self.wait_view(token, task_id, "the end", |view| {
            ["completed", "failed", "cancelled"].contains(&view["status"].as_str().unwrap_or(""))
        })
        .await
    }

    /// Polls the task's view (bounded) until `ready` holds, and returns it.
    pub async fn wait_view(
        &self,
        token: &str,
        task_id: Uuid,
        what: &str,
        ready: impl Fn(&Value) -> bool,
    ) -> Value {
        for _ in 0..800 {
            let view: Value = self
                .get(&format!("/api/tasks/{task_id}"), token)
                .await
                .json()
                .await
                .unwrap();
            if ready(&view) {
                return view;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("task {task_id}: {what} did not happen in 20 s");
    }

    /// POST on api `instance`: the body and status.
    pub async fn control(&self, instance: usize, token: &str, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::POST, instance, token, path, None)
            .await
    }

    /// A request on api `instance` as the holder of `token`: its status and JSON body
    /// (`null` when there is none).
    pub async fn send(
        &self,
        method: reqwest::Method,
        instance: usize,
        token: &str,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.url(instance)))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let r = request.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// The whole log as it is now, from the NDJSON export.
    pub async fn log(&self, token: &str, task_id: Uuid) -> Vec<Value> {
        exported_log(&self.client, self.url(0), token, task_id).await
    }
}

#[derive(Debug, Clone)]
pub struct SseEvent {
    pub id: String,
    pub event: String,
    pub data: Value,
}

impl SseEvent {
    pub fn seq(&self) -> u64 {
        self.data["seq"].as_u64().unwrap()
    }
}

/// Polls `done` (bounded: 20 s) until it holds; `what` names it in the failure.
pub async fn wait_until<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..400 {
        if done().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not happen in 20 s");
}

/// The events of an exported log that have type `kind`.
pub fn of_type<'l>(log: &'l [Value], kind: &str) -> Vec<&'l Value> {
    log.iter().filter(|e| e["type"] == kind).collect()
}

pub async fn collect_sse(response: reqwest::Response, limit: Option<usize>) -> Vec<SseEvent> {
    let mut stream = response.bytes_stream().eventsource();
    let mut events = vec![];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while limit.is_none_or(|l| events.len() < l) {
        let next = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("the event stream stalled for 30 s");
        match next {
            Some(Ok(e)) => events.push(SseEvent {
                id: e.id,
                event: e.event,
                data: serde_json::from_str(&e.data).unwrap_or(Value::Null),
            }),
            Some(Err(e)) => panic!("SSE error: {e}"),
            None => break,
        }
    }
    events
}

fn distributed_config(schema: &str, prefix: &str, tweaks: &Tweaks) -> BackendConfig {
    BackendConfig {
        queue: troupe_events::queue::NatsQueueConfig {
            ack_wait: tweaks.ack_wait,
            ..Default::default()
        },
        database_url: Some(schema_database_url(schema)),
        nats_url: Some(nats_url()),
        nats_prefix: prefix.to_string(),
        db_max_connections: 5,
        active_tasks_per_user: tweaks.active_tasks_per_user,
        ..BackendConfig::default()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
        for handle in &self.handles {
            handle.abort();
        }
        match &self.cleanup {
            Cleanup::DataDir(dir) => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Cleanup::Remote { schema, prefix } => drop_remote(schema, prefix),
        }
    }
}

/// Creates a PostgreSQL schema of a test's own.
pub async fn create_schema(schema: &str) {
    let admin = sqlx::PgPool::connect(&database_url()).await.expect(
        "PostgreSQL must be reachable at TEST_DATABASE_URL (scripts/test and .ci/run start it)",
    );
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
}

/// The test database's URL with `schema` as the search path.
pub fn schema_database_url(schema: &str) -> String {
    format!("{}?options[search_path]={schema}", database_url())
}

/// Drops a test's schema and the NATS streams of its prefix. Drop runs outside any runtime
/// we may block: the clean-up runs on a thread of its own.
pub fn drop_remote(schema: &str, prefix: &str) {
    let (schema, prefix) = (schema.to_string(), prefix.to_string());
    let _ = std::thread::spawn(move || {
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(async move {
                if let Ok(pool) = sqlx::PgPool::connect(&database_url()).await {
                    let _ = sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
                        .execute(&pool)
                        .await;
                }
                if let Ok(client) = async_nats::connect(nats_url()).await {
                    let js = async_nats::jetstream::new(client);
                    let subjects = Subjects::new(&prefix);
                    for name in ["EVENTS", "TASKS"] {
                        let _ = js.delete_stream(subjects.stream_name(name)).await;
                    }
                }
            })
    })
    .join();
}

/// Polls `/readyz` of the server at `url` until it answers 200; panics after 10 s.
pub async fn wait_until_ready(client: &reqwest::Client, url: &str) {
    for _ in 0..200 {
        if let Ok(r) = client.get(format!("{url}/readyz")).send().await
            && r.status().is_success()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{url} did not become ready in 10 s");
}

/// The `troupe` binary, embedded on `data_dir` (whatever the test's environment says)
/// and bound to a free port; returns the command, for the caller's environment and
/// output, and the url it will serve.
pub fn troupe_command(data_dir: &std::path::Path) -> (std::process::Command, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_troupe"));
    command
        .args(["--data-dir", data_dir.to_str().unwrap()])
        .args(["--bind", &format!("127.0.0.1:{port}")])
        .env_remove("DATABASE_URL")
        .env_remove("NATS_URL")
        // The load tests submit hundreds of tasks a second as one user.
        .env("TROUPE_SUBMITS_PER_MINUTE", "1000000")
        .stdout(std::process::Stdio::null());
    (command, format!("http://127.0.0.1:{port}"))
}

/// A task's whole log as it is now, from the NDJSON export of the server at `url`.
pub async fn exported_log(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    task_id: impl std::fmt::Display,
) -> Vec<Value> {
    exported_lines(client, url, token, task_id)
        .await
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The NDJSON export's lines: each event's JSON exactly as stored.
pub async fn exported_lines(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    task_id: impl std::fmt::Display,
) -> Vec<String> {
    let text = client
        .get(format!("{url}/api/tasks/{task_id}/events"))
        .bearer_auth(token)
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines().map(str::to_string).collect()
}
