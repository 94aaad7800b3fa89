//! HTTP clients that put up with a cluster being knocked over: requests go to any api and are
//! retried with backoff, and SSE clients drop and reconnect with `Last-Event-ID`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::time::{Instant, sleep, timeout, timeout_at};
use tokio_util::sync::CancellationToken;

use crate::checker::{Received, is_terminal};

/// The cluster's apis, as a client that retries on whichever answers.
#[derive(Clone)]
pub struct Api {
    pub http: reqwest::Client,
    pub urls: Arc<Vec<String>>,
    pub token: String,
}

/// What a control request (cancel, pause, resume, retry) got.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Answer {
    /// 200 or 202.
    Accepted,
    /// 409 and its code: the task was not in a state for it (`task_finished`…).
    Conflict(String),
    /// 404 and its code: the endpoint does not exist (yet), or the task or agent is unknown.
    NotFound(String),
    /// Any other answer, or none (the api was down).
    Other(String),
}

impl Answer {
    /// For counting: "accepted", "409 task_finished", "error 500", "no answer"…
    pub fn label(&self) -> String {
        match self {
            Answer::Accepted => "accepted".into(),
            Answer::Conflict(code) => format!("409 {code}"),
            Answer::NotFound(code) => format!("404 {code}"),
            Answer::Other(what) => match what.split(' ').next() {
                Some(code) if code.parse::<u16>().is_ok() => format!("error {code}"),
                _ => "no answer".into(),
            },
        }
    }
}

fn error_code(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.chars().take(100).collect())
}

pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .pool_idle_timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

impl Api {
    pub fn new(urls: Vec<String>) -> Api {
        Api {
            http: http_client(),
            urls: Arc::new(urls),
            token: String::new(),
        }
    }

    pub fn url(&self, api: usize, path: &str) -> String {
        format!("{}{path}", self.urls[api % self.urls.len()])
    }

    /// Registers a user (on any api, retrying until `deadline`) and keeps its token.
    pub async fn register(&mut self, email: &str, within: Duration) {
        let deadline = Instant::now() + within;
        let body = json!({"email": email, "password": "correct horse battery"});
        let mut last = String::new();
        for attempt in 0.. {
            if Instant::now() > deadline {
                panic!("could not register {email}: {last}");
            }
            for path in ["/api/auth/register", "/api/auth/login"] {
                let sent = self
                    .http
                    .post(self.url(attempt, path))
                    .json(&body)
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status().is_success() => {
                        let body: Value = r.json().await.unwrap();
                        self.token = body["token"].as_str().unwrap().to_string();
                        return;
                    }
                    // Taken: an earlier attempt got through; log in instead.
                    Ok(r) if r.status() == 409 => continue,
                    Ok(r) => {
                        last = format!(
                            "{path}: {} {}",
                            r.status(),
                            r.text().await.unwrap_or_default()
                        )
                    }
                    Err(e) => last = format!("{path}: {e}"),
                }
                break;
            }
            sleep(Duration::from_millis(200)).await;
        }
    }

    /// Submits a task with an Idempotency-Key, retrying on any api until one accepts it,
    /// so that a submit whose answer was lost does not make a second task.
    pub async fn submit(
        &self,
        body: &Value,
        key: &str,
        within: Duration,
    ) -> Result<String, String> {
        let deadline = Instant::now() + within;
        let mut last = String::new();
        let mut attempt = 0;
        while Instant::now() < deadline {
            let sent = self
                .http
                .post(self.url(attempt, "/api/tasks"))
                .bearer_auth(&self.token)
                .header("Idempotency-Key", key)
                .json(body)
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            match sent {
                Ok(r) if r.status() == 202 => {
                    let body: Value = r.json().await.map_err(|e| e.to_string())?;
                    return Ok(body["taskId"].as_str().unwrap().to_string());
                }
                Ok(r) if r.status().is_client_error() => {
                    return Err(format!(
                        "{}: {}",
                        r.status(),
                        r.text().await.unwrap_or_default()
                    ));
                }
                Ok(r) => last = format!("{}: {}", r.status(), r.text().await.unwrap_or_default()),
                Err(e) => last = e.to_string(),
            }
            attempt += 1;
            sleep(Duration::from_millis(250)).await;
        }
        Err(format!("no api accepted the task: {last}"))
    }

    /// The task view (`GET /api/tasks/{id}`), from any api (None while none answers).
    pub async fn view(&self, task: &str, api: usize) -> Option<Value> {
        for i in 0..self.urls.len() {
            let sent = self
                .http
                .get(self.url(api + i, &format!("/api/tasks/{task}")))
                .bearer_auth(&self.token)
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            if let Ok(r) = sent
                && r.status() == 200
                && let Ok(view) = r.json::<Value>().await
            {
                return Some(view);
            }
        }
        None
    }

    /// The task's `status`, from any api (None while none answers).
    pub async fn status(&self, task: &str, api: usize) -> Option<String> {
        let view = self.view(task, api).await?;
        view["status"].as_str().map(str::to_string)
    }

    /// The whole log as NDJSON (raw body), from any api.
    pub async fn log(&self, task: &str, api: usize) -> Result<String, String> {
        let mut last = String::new();
        for i in 0..self.urls.len() {
            let sent = self
                .http
                .get(self.url(api + i, &format!("/api/tasks/{task}/events")))
                .bearer_auth(&self.token)
                .header("Accept", "application/x-ndjson")
                .timeout(Duration::from_secs(20))
                .send()
                .await;
            match sent {
                Ok(r) if r.status() == 200 => match r.text().await {
                    Ok(body) => return Ok(body),
                    Err(e) => last = format!("reading the export: {e}"),
                },
                Ok(r) => last = format!("{}: {}", r.status(), r.text().await.unwrap_or_default()),
                Err(e) => last = e.to_string(),
            }
        }
        Err(last)
    }

    /// `POST /api/tasks/{id}/cancel`.
    pub async fn cancel(&self, task: &str, api: usize) -> Answer {
        self.control(&format!("/api/tasks/{task}/cancel"), None, api)
            .await
    }

    /// `POST /api/tasks/{id}/agents/{role}/cancel`.
    pub async fn cancel_agent(&self, task: &str, role: &str, api: usize) -> Answer {
        self.control(
            &format!("/api/tasks/{task}/agents/{role}/cancel"),
            None,
            api,
        )
        .await
    }

    /// `POST /api/tasks/{id}/pause`.
    pub async fn pause(&self, task: &str, api: usize) -> Answer {
        self.control(&format!("/api/tasks/{task}/pause"), None, api)
            .await
    }

    /// `POST /api/tasks/{id}/resume`.
    pub async fn resume(&self, task: &str, api: usize) -> Answer {
        self.control(&format!("/api/tasks/{task}/resume"), None, api)
            .await
    }

    /// `POST /api/tasks/{id}/retry`, with `{"agents": …}` when given.
    pub async fn retry(&self, task: &str, agents: Option<Vec<String>>, api: usize) -> Answer {
        let body = agents.map(|agents| json!({"agents": agents}));
        self.control(&format!("/api/tasks/{task}/retry"), body, api)
            .await
    }

    async fn control(&self, path: &str, body: Option<Value>, api: usize) -> Answer {
        let mut request = self
            .http
            .post(self.url(api, path))
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(10));
        if let Some(body) = body {
            request = request.json(&body);
        }
        match request.send().await {
            Ok(r) if r.status() == 200 || r.status() == 202 => Answer::Accepted,
            Ok(r) if r.status() == 409 => {
                Answer::Conflict(error_code(&r.text().await.unwrap_or_default()))
            }
            Ok(r) if r.status() == 404 => {
                Answer::NotFound(error_code(&r.text().await.unwrap_or_default()))
            }
            Ok(r) => Answer::Other(format!(
                "{} {}",
                r.status(),
                r.text().await.unwrap_or_default()
            )),
            Err(e) => Answer::Other(format!("{e}")),
        }
    }
}

/// How an SSE client behaves.
#[derive(Debug, Clone, Copy)]
pub struct SseConfig {
    /// Chance that a connection is dropped by the client after a few events.
    pub drop_chance: f64,
    /// A connection silent for this long (heartbeats come every 15 s) counts as stalled.
    pub stall: Duration,
    /// The client gives up at this time.
    pub deadline: Instant,
}

/// What one SSE client saw over its whole life.
#[derive(Debug, Default)]
pub struct SseOutcome {
    pub name: String,
    pub task: String,
    pub received: Vec<Received>,
    /// Responses by status code (200, 204, 5xx…), and `0` for connection errors.
    pub statuses: BTreeMap<u16, u32>,
    /// Connections the client dropped on purpose.
    pub drops: u32,
    /// Responses that ended with a transport error, and silent ones given up.
    pub broken: u32,
    pub stalls: u32,
    /// Terminal events received (more than one when the task was retried).
    pub terminals: u32,
    /// It saw the end: a 204 after the run was over.
    pub finished: bool,
    /// Answers no client should get (a 4xx other than what the contract allows).
    pub anomalies: Vec<String>,
}

/// A client following one task's events across drops, api restarts and retries.
pub struct SseClient {
    api: Api,
    rng: StdRng,
    config: SseConfig,
    out: SseOutcome,
}

impl SseClient {
    pub fn new(api: Api, name: String, task: String, seed: u64, config: SseConfig) -> SseClient {
        SseClient {
            api,
            rng: StdRng::seed_from_u64(seed),
            config,
            out: SseOutcome {
                name,
                task,
                ..SseOutcome::default()
            },
        }
    }

    /// The seq of the last event received: what `Last-Event-ID` says on a reconnect.
    fn cursor(&self) -> Option<&str> {
        self.out.received.last().map(|e| e.id.as_str())
    }

    /// Follows the task until `done` is cancelled (no more retries will come) and a
    /// reconnect then answers 204. Between a 204 and `done`, it checks again every 2 s or
    /// when `retried` is notified.
    pub async fn run(mut self, done: CancellationToken, retried: Arc<Notify>) -> SseOutcome {
        let mut backoff = Duration::from_millis(100);
        while Instant::now() < self.config.deadline {
            let api = self.rng.random_range(0..self.api.urls.len());
            let mut request = self
                .api
                .http
                .get(
                    self.api
                        .url(api, &format!("/api/tasks/{}/events", self.out.task)),
                )
                .bearer_auth(&self.api.token);
            if let Some(cursor) = self.cursor() {
                request = request.header("Last-Event-ID", cursor);
            }
            // Checked before connecting: a 204 seen after `done` proves the end.
            let was_done = done.is_cancelled();
            let response = match timeout(Duration::from_secs(10), request.send()).await {
                Ok(Ok(r)) => r,
                Ok(Err(_)) | Err(_) => {
                    *self.out.statuses.entry(0).or_default() += 1;
                    sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            let status = response.status().as_u16();
            *self.out.statuses.entry(status).or_default() += 1;
            match status {
                200 => {
                    backoff = Duration::from_millis(100);
                    self.read(response).await;
                    // A client that reconnects at once, or after a pause.
                    if self.rng.random_bool(0.5) {
                        sleep(Duration::from_millis(self.rng.random_range(0..400))).await;
                    }
                }
                204 => {
                    if was_done {
                        self.out.finished = true;
                        break;
                    }
                    tokio::select! {
                        _ = done.cancelled() => {}
                        _ = retried.notified() => {}
                        _ = sleep(Duration::from_secs(2)) => {}
                    }
                }
                400..=499 => {
                    let body = response.text().await.unwrap_or_default();
                    self.out.anomalies.push(format!(
                        "{status} with Last-Event-ID {:?}: {body}",
                        self.cursor()
                    ));
                    sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                _ => {
                    sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
        self.out
    }

    /// Reads one response until it ends, breaks, stalls, or the client drops it.
    async fn read(&mut self, response: reqwest::Response) {
        let drop_after = self
            .rng
            .random_bool(self.config.drop_chance)
            .then(|| self.rng.random_range(1..12usize));
        let mut events = response.bytes_stream().eventsource();
        let mut count = 0;
        loop {
            let until = (Instant::now() + self.config.stall).min(self.config.deadline);
            match timeout_at(until, events.next()).await {
                Err(_) => {
                    self.out.stalls += 1;
                    return;
                }
                Ok(None) => return,
                Ok(Some(Err(_))) => {
                    self.out.broken += 1;
                    return;
                }
                Ok(Some(Ok(event))) => {
                    if is_terminal(&event.event) {
                        self.out.terminals += 1;
                    }
                    self.out.received.push(Received {
                        id: event.id,
                        event: event.event,
                        data: event.data,
                    });
                    count += 1;
                    if drop_after == Some(count) {
                        self.out.drops += 1;
                        return;
                    }
                }
            }
        }
    }
}
