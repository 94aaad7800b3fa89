//! The server under test and the few API calls the modes make around their measurements:
//! an account, the catalogue, submitting a task and reading its view.

use std::time::Duration;

use reqwest::{StatusCode, Url};
use serde_json::{Value, json};

use crate::{Error, Result};

/// Which server to drive, as whom, and which process to measure.
#[derive(Debug, Clone)]
pub struct Target {
    /// The server's origin, e.g. `http://127.0.0.1:8080`.
    pub server: Url,
    /// A session token; `None` registers a fresh account.
    pub token: Option<String>,
    /// The server's process id, for its RSS and CPU time (same machine only).
    pub pid: Option<u32>,
}

impl Target {
    pub fn new(server: &str) -> Result<Target> {
        let server = Url::parse(server)
            .map_err(|e| Error::Invalid(format!("--server {server:?} is not a URL: {e}")))?;
        if server.cannot_be_a_base() || server.host_str().is_none() {
            return Err(Error::Invalid(format!(
                "--server {server} must be an origin like http://127.0.0.1:8080"
            )));
        }
        Ok(Target {
            server,
            token: None,
            pid: None,
        })
    }
}

/// A keep-alive HTTP client for the API calls and for the measured requests of the
/// latency, throughput and replay modes. `idle` bounds the idle connections it keeps.
pub fn http_client(idle: usize) -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(idle)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(10))
        .build()?)
}

/// What `POST /api/tasks` answers.
#[derive(Debug, Clone)]
pub struct Submitted {
    pub task_id: String,
    /// `/api/tasks/{id}/events?token=…`: readable without a session token.
    pub stream_url: String,
}

/// A signed-in client of the server under test.
#[derive(Debug, Clone)]
pub struct Api {
    pub base: Url,
    pub client: reqwest::Client,
    pub token: String,
}

impl Api {
    /// Signs in with the target's token, or registers a fresh account.
    pub async fn connect(target: &Target) -> Result<Api> {
        let client = http_client(4)?;
        let token = match &target.token {
            Some(token) => token.clone(),
            None => {
                let email = format!("load-{}@example.com", uuid::Uuid::new_v4().simple());
                let response = client
                    .post(target.server.join("/api/auth/register").expect("a path"))
                    .json(&json!({"email": email, "password": "troupe-load password"}))
                    .send()
                    .await?;
                let body = expect(response, StatusCode::CREATED, "registering an account").await?;
                body["token"]
                    .as_str()
                    .ok_or_else(|| {
                        Error::Invalid(format!("registering an account answered {body}"))
                    })?
                    .to_string()
            }
        };
        Ok(Api {
            base: target.server.clone(),
            client,
            token,
        })
    }

    pub fn url(&self, path: &str) -> Url {
        self.base.join(path).expect("a path joins an origin")
    }

    /// The roles of the catalogue, in its order.
    pub async fn roles(&self) -> Result<Vec<String>> {
        let response = self
            .client
            .get(self.url("/api/agents"))
            .bearer_auth(&self.token)
            .send()
            .await?;
        let body = expect(response, StatusCode::OK, "GET /api/agents").await?;
        let roles: Vec<String> = body
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a["role"].as_str().map(str::to_string))
            .collect();
        if roles.is_empty() {
            return Err(Error::Invalid(format!(
                "GET /api/agents listed no agents: {body}"
            )));
        }
        Ok(roles)
    }

    /// `POST /api/tasks` without waiting.
    pub async fn submit(&self, task: &Value) -> Result<Submitted> {
        let response = self
            .client
            .post(self.url("/api/tasks"))
            .bearer_auth(&self.token)
            .json(task)
            .send()
            .await?;
        let body = expect(response, StatusCode::ACCEPTED, "POST /api/tasks").await?;
        match (body["taskId"].as_str(), body["streamUrl"].as_str()) {
            (Some(id), Some(url)) => Ok(Submitted {
                task_id: id.to_string(),
                stream_url: url.to_string(),
            }),
            _ => Err(Error::Invalid(format!("POST /api/tasks answered {body}"))),
        }
    }

    /// `GET /api/tasks/{id}`: the task's view.
    pub async fn task(&self, task_id: &str) -> Result<Value> {
        let response = self
            .client
            .get(self.url(&format!("/api/tasks/{task_id}")))
            .bearer_auth(&self.token)
            .send()
            .await?;
        expect(
            response,
            StatusCode::OK,
            &format!("GET /api/tasks/{task_id}"),
        )
        .await
    }

    /// Polls the task's view until its status is terminal, for at most `within`.
    pub async fn wait_finished(&self, task_id: &str, within: Duration) -> Result<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let view = self.task(task_id).await?;
            if is_finished(&view) {
                return Ok(view);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Invalid(format!(
                    "task {task_id} did not finish within {within:?} (status {})",
                    view["status"]
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Whether a task view's status is one a task ends in.
pub fn is_finished(view: &Value) -> bool {
    matches!(
        view["status"].as_str(),
        Some("completed" | "failed" | "cancelled")
    )
}

/// The task's `lastSeq`: how many events its log has.
pub fn last_seq(view: &Value) -> Result<u64> {
    view["lastSeq"]
        .as_u64()
        .ok_or_else(|| Error::Invalid(format!("a task view without lastSeq: {view}")))
}

/// The body of a response with the expected status, or an error quoting what came back.
async fn expect(response: reqwest::Response, status: StatusCode, what: &str) -> Result<Value> {
    if response.status() != status {
        return Err(status_error(response, what).await);
    }
    Ok(response.json().await?)
}

/// An error for an unexpected answer, with the start of its body.
pub async fn status_error(response: reqwest::Response, what: &str) -> Error {
    let status = response.status().as_u16();
    let mut body = response.text().await.unwrap_or_default();
    if let Some((cut, _)) = body.char_indices().nth(300) {
        body.truncate(cut);
    }
    Error::Status {
        what: what.to_string(),
        status,
        body,
    }
}

/// A task that costs the server as little as possible besides its own machinery: the
/// simulated provider with no pause and one chunk per agent, agents one after another.
pub fn trivial_task(roles: &[String]) -> Value {
    json!({
        "title": "troupe-load",
        "description": "troupe-load: a zero-latency task",
        "selectedAgents": roles,
        "executionMode": "sequential",
        "provider": "simulated",
        "providerOptions": {"latencyMs": 0, "tokens": 1},
    })
}
